"""The suite's stages, one module each; `ldm_eval.suite.runner` sequences them.

Each module's `run(ctx)` does its stage on a `StageContext`. This package imports none of them
on its own: the report's HTML reads the train stage's model folder without loading the rest.
"""
