"""ldm env library: Farama MiniGrid grid worlds.

Partially observable navigation and key/door puzzles with sparse rewards. MiniGrid's
observation is a Dict (image, direction, mission string); every env is wrapped in
`minigrid.wrappers:ImgObsWrapper`, which keeps the 7x7x3 uint8 egocentric grid
encoding (object, colour, state per cell; not RGB pixels). Only tasks whose mission
is fixed or readable from the grid are declared, since the mission text is dropped.
The library runs in its own virtualenv; this package never imports it.
"""

from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.yaml")
