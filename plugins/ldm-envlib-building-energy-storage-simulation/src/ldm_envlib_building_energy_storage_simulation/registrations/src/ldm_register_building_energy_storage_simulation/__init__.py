"""Registers the env classes building-energy-storage-simulation ships without registering them.

Written by `ldm-envs add --entry-point`; a re-run rewrites it. A kwarg given as
{"()": "module:Callable", ...} (the convention of logging.config.dictConfig) is built by calling
that callable with the other keys, so an env whose constructor takes an object (a simulation, a
data set) is made from the manifest's JSON kwargs.
"""

import importlib

from gymnasium.envs.registration import register, registry

ENTRY_POINTS = {"BuildingEnergyStorage-v0": "building_energy_storage_simulation:Environment"}


def _load(target):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _build(value):
    if isinstance(value, dict):
        if "()" in value:
            rest = dict((k, _build(v)) for k, v in value.items() if k != "()")
            return _load(value["()"])(**rest)
        return dict((k, _build(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_build(v) for v in value]
    return value


def _creator(target):
    def make(**kwargs):
        return _load(target)(**_build(kwargs))

    return make


for _id, _target in ENTRY_POINTS.items():
    if _id not in registry:
        register(id=_id, entry_point=_creator(_target))
