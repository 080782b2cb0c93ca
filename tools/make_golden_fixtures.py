"""Regenerate the golden fixtures under tests/fixtures/golden/ with today's writers.

Usage: uv run python tools/make_golden_fixtures.py

Run it only on a deliberate format change (a new shard `FORMAT_VERSION`, a new checkpoint
`FORMAT_VERSION`): the fixtures are there so that files written by an older release still read.
After running it, commit the new files and say in the change why the old ones no longer read;
`tests/ldm_envs/test_golden_shards.py` and `tests/ldm_model/test_golden_checkpoint.py` assert
their content and must be updated with it.

What it writes:

- `dataset/`: a dataset root as ldm-autorl leaves it, two shards with their relabeled
  `ref_action`, their filter decisions and the index (`index/runs.parquet`,
  `index/episodes.parquet`, `index/info.json`). Every value follows a formula the tests repeat
  (no random numbers), so the tests check values, not only shapes.
- `checkpoint/checkpoints/step-00000001/`: a checkpoint of the smallest `LDM` the code builds
  (one layer of width 2; the 28 x 1024-bin decoder and the image encoder set the floor of its
  size), after one AdamW step on a batch of `dataset/` in which only the norms had gradients
  (so the optimizer files hold state but stay small).
- `checkpoint/expected_policy.npz`: the actions and logits an `LDMPolicy` loaded from that
  checkpoint gives on fixed inputs, which the test must reproduce.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ldm_envs.dataset import ShardMeta, ShardWriter, write_decision, write_index, write_ref_actions
from ldm_envs.spaces import BoxSpace, DiscreteSpace
from ldm_model.config import ModelConfig
from ldm_model.data import WindowSampler
from ldm_model.model import LDM
from ldm_model.policy import LDMPolicy
from ldm_model.training import TrainConfig
from ldm_model.training.checkpoint import dataset_info, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path("tests") / "fixtures" / "golden"
CREATED = 1_700_000_000.0

VECTOR_OBS = BoxSpace(shape=(4,), low=-math.inf, high=math.inf)
VECTOR_ACT = DiscreteSpace(n=2)
IMAGE_OBS = BoxSpace(shape=(7, 7, 3), dtype="uint8", low=0, high=255)
IMAGE_ACT = BoxSpace(shape=(2,), low=-1.0, high=1.0)

#: The smallest model the architecture allows: the checkpoint fixture's size is set by it.
GOLDEN_MODEL = ModelConfig(
    name="golden",
    hidden_size=2,
    num_layers=1,
    num_heads=1,
    intermediate_size=4,
    context=8,
    token_dim=1,
    image_dim=2,
)


def _meta(env_id: str, obs: BoxSpace, act: BoxSpace | DiscreteSpace, seed: int) -> ShardMeta:
    return ShardMeta(
        library="golden",
        env_id=env_id,
        candidate="ppo",
        seed=seed,
        run_key=f"golden/{env_id}/ppo/{seed}",
        observation_space=obs,
        action_space=act,
        environment_ref="venv-golden",
        created=CREATED,
    )


def write_vector_shard(path: Path) -> None:
    """40 rows in record batches of 16; episodes of 12 rows, the last one incomplete.

    obs[i] = i + [0, .25, .5, .75]; action[i] = i % 2; reward[i] = i % 5 - 1.5; even episodes
    end terminated, odd ones truncated; row 23 (end of episode 1) is also `restarted`;
    ref_action[i] = 1 - action[i].
    """
    rows = np.arange(40)
    step = rows % 12
    episode = rows // 12
    last = (step == 11) & (rows < 36)
    with ShardWriter(path, _meta("VecDiscrete-v0", VECTOR_OBS, VECTOR_ACT, 0), batch_rows=16) as w:
        w.append(
            obs=(rows[:, None] + np.arange(4)[None] / 4).astype(np.float32),
            action=rows % 2,
            reward=(rows % 5 - 1.5).astype(np.float32),
            terminated=last & (episode % 2 == 0),
            truncated=last & (episode % 2 == 1),
            episode=episode,
            step=step,
            restarted=rows == 23,
        )
    write_ref_actions(path, 1 - rows % 2)
    write_decision(path, {"kept": True, "reason": "kept"})


def write_image_shard(path: Path) -> None:
    """One terminated episode of 10 rows of 7x7x3 uint8 images and Box(2) actions.

    obs[i] = (7 i + arange(147)) % 256 reshaped; action[i] = [i / 10, -i / 10];
    reward[i] = i / 4; ref_action[i] = action[i] / 2.
    """
    rows = np.arange(10)
    obs = ((7 * rows[:, None] + np.arange(147)[None]) % 256).astype(np.uint8).reshape(10, 7, 7, 3)
    action = np.stack([rows / 10, -rows / 10], 1).astype(np.float32)
    with ShardWriter(path, _meta("Image-v0", IMAGE_OBS, IMAGE_ACT, 1)) as w:
        w.append(
            obs=obs,
            action=action,
            reward=(rows / 4).astype(np.float32),
            terminated=rows == 9,
            truncated=np.zeros(10, bool),
            episode=np.zeros(10, np.int64),
            step=rows,
        )
    write_ref_actions(path, action / 2)
    write_decision(path, {"kept": True, "reason": "kept"})


def write_dataset(root: Path) -> None:
    for env_id, write in (("VecDiscrete-v0", write_vector_shard), ("Image-v0", write_image_shard)):
        folder = root / "golden" / env_id
        folder.mkdir(parents=True)
        write(folder / "run-0.arrow")
    write_index(root)
    (root / ".index.lock").unlink(missing_ok=True)  # a writer's lock, not data


def policy_inputs(steps: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed (obs, reward, done) of 2 vector envs per step; the test feeds the same."""
    out = []
    for t in range(steps):
        obs = (np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5) * (t + 1) / 4
        reward = np.array([t - 1.0, 0.5 * t], np.float32)
        done = np.array([False, t == 2])
        out.append((obs, reward, done))
    return out


def write_checkpoint(dataset: Path, out: Path) -> Path:
    torch.manual_seed(0)
    model = LDM(GOLDEN_MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = WindowSampler(dataset, context=GOLDEN_MODEL.context)
    model.loss(sampler.sample(0, 2)).loss.backward()
    for name, param in model.named_parameters():
        if "norm" not in name:
            param.grad = None  # no AdamW state: keeps optimizer.safetensors small
    optimizer.step()
    optimizer.zero_grad()
    config = TrainConfig(
        model=GOLDEN_MODEL, data_root=dataset, context=GOLDEN_MODEL.context, batch_size=2, steps=1
    )
    # the dataset's place as the repository knows it, not this machine's absolute path
    info = dataset_info(sampler).model_copy(update={"root": dataset.as_posix()})
    return save_checkpoint(
        out,
        model=model,
        optimizer=optimizer,
        train_config=config,
        step=1,
        dataset=info,
        metrics={"loss": 1.0},
    )


def record_policy(checkpoint: Path, out: Path) -> None:
    policy = LDMPolicy.from_checkpoint(checkpoint, VECTOR_OBS, VECTOR_ACT, 2)
    actions, logits = [], []
    for obs, reward, done in policy_inputs():
        actions.append(np.asarray(policy.act(obs, reward, done)))
        assert policy.last_logits is not None
        logits.append(policy.last_logits.cpu().numpy())
    np.savez(out, actions=np.stack(actions), logits=np.stack(logits))


def main() -> None:
    os.chdir(REPO)  # recorded paths are relative to the repository root
    torch.set_num_threads(1)
    shutil.rmtree(GOLDEN, ignore_errors=True)
    dataset = GOLDEN / "dataset"
    write_dataset(dataset)
    step = write_checkpoint(dataset, GOLDEN / "checkpoint")
    record_policy(step, GOLDEN / "checkpoint" / "expected_policy.npz")
    for path in sorted(GOLDEN.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size:>9,}  {path}")


if __name__ == "__main__":
    main()
