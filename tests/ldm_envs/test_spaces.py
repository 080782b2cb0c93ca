import gymnasium as gym
import numpy as np
import pytest

from ldm_envs.errors import SpaceError
from ldm_envs.spaces import (
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    check_limits,
    from_gymnasium,
    space_from_dict,
)

SPACES = [
    gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
    gym.spaces.Box(np.array([-4.8, -np.inf]), np.array([4.8, np.inf]), dtype=np.float32),
    gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
    gym.spaces.Box(-5, 5, (2, 3), np.int64),
    gym.spaces.Box(-1.0, 1.0, (4,), np.float64),
    gym.spaces.Discrete(7),
    gym.spaces.Discrete(3, start=-1),
    gym.spaces.MultiDiscrete([3, 4, 5]),
    gym.spaces.MultiDiscrete([2, 2], start=[1, -1]),
    gym.spaces.MultiBinary(6),
]


@pytest.mark.parametrize("space", SPACES, ids=[repr(s) for s in SPACES])
def test_round_trip_is_lossless(space):
    model = from_gymnasium(space)
    back = model.to_gymnasium()
    assert back == space
    # and through JSON, as manifests and the worker carry them
    again = space_from_dict(model.model_dump(mode="python"))
    assert again == model
    assert again.to_gymnasium() == space
    sample = space.sample()
    assert back.contains(sample)


def test_image_detection_and_flat_dims():
    image = from_gymnasium(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8))
    assert image.is_image and image.describe().startswith("image")
    assert not from_gymnasium(gym.spaces.Box(0, 255, (64, 64), np.uint8)).is_image
    assert from_gymnasium(gym.spaces.Discrete(5)).flat_dim == 1
    assert from_gymnasium(gym.spaces.MultiDiscrete([3, 3])).flat_dim == 2


def test_limits_are_refused_with_the_culprit_named():
    act = DiscreteSpace(n=2)
    big_obs = BoxSpace(shape=(129,), low=-1.0, high=1.0)
    with pytest.raises(SpaceError, match=r"lib/Env-v0: observation has 129 dims.*limit is 128"):
        check_limits(big_obs, act, where="lib/Env-v0")
    check_limits(BoxSpace(shape=(128,), low=-1.0, high=1.0), act)
    image = BoxSpace(shape=(96, 96, 3), dtype="uint8", low=0, high=255)
    check_limits(image, act)  # images are exempt from the observation limit
    with pytest.raises(SpaceError, match="action has 29 dims; the limit is 28"):
        check_limits(image, MultiBinarySpace(n=29))


def test_malformed_spaces_are_refused():
    with pytest.raises(ValueError, match="low has 2 values but shape"):
        BoxSpace(shape=(3,), low=[0.0, 1.0], high=1.0)
    with pytest.raises(ValueError, match="low exceeds high"):
        BoxSpace(shape=(1,), low=2.0, high=1.0)
    with pytest.raises(ValueError, match="unknown dtype"):
        BoxSpace(shape=(1,), dtype="floaty", low=0.0, high=1.0)
    with pytest.raises(SpaceError, match="unsupported space Text"):
        from_gymnasium(gym.spaces.Text(5))
    with pytest.raises(SpaceError, match="Dict/Tuple are flattened in the worker"):
        from_gymnasium(gym.spaces.Dict({"a": gym.spaces.Discrete(2)}))
