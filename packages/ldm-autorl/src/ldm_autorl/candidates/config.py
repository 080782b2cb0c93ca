"""`CandidateConfig`: one algorithm, one set of hyperparameters, the spaces it supports.

Validation checks the candidate against the installed library (algorithm, policy, every
constructor argument: see `hyperparams`), so a registry only ever holds candidates that will
build. Building the model is `build.make_model`'s; this module only describes the candidate.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ldm_autorl.candidates.build import REPLAY_BUFFER_MAX_BYTES
from ldm_autorl.candidates.compat import compatibility
from ldm_autorl.candidates.hyperparams import (
    _RESERVED,
    _algorithm_class,
    _check_policy_kwargs,
    _check_value,
    _resolve_reference,
)
from ldm_autorl.candidates.kinds import (
    ACTION_KINDS,
    ALGORITHM_ACTION_KINDS,
    ActionKind,
    ObservationKind,
    SpaceLike,
    _as_model,
    _needs_small_cnn,
    _small_cnn_class,
    observation_kind,
)
from ldm_autorl.errors import CandidateError
from ldm_envs.spaces import BoxSpace

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")


class CandidateConfig(BaseModel):
    """One algorithm with one set of hyperparameters, and the spaces it supports.

    `hyperparams` are keyword arguments of the algorithm's constructor, checked against its
    signature. Plain data only, with three conveniences: `"lin_<x>"` for a linear schedule from
    `x` to 0 (learning rates, clip ranges, ARS's `delta_std`), a list for `train_freq`
    (`[1, "episode"]`) and a mapping for `action_noise` (see `ActionNoiseConfig`). In
    `policy_kwargs`, `*_fn`/`*_class` values may be import strings (`"torch.nn:Tanh"`,
    `"nn.Tanh"`).

    `policy` is the policy for vector and discrete observations; on image observations
    `make_model` switches `MlpPolicy` to `CnnPolicy` where the algorithm has one (see
    `resolve_policy`). `n_envs` is how many parallel envs the hyperparameters are tuned for:
    build the `VecEnv` with that many (on-policy rollouts are `n_steps * n_envs` steps).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    algorithm: str
    package: str = "stable_baselines3"
    policy: str = "MlpPolicy"
    hyperparams: dict[str, Any] = {}
    policy_kwargs: dict[str, Any] = {}
    n_envs: int = Field(default=1, ge=1)
    observation: list[ObservationKind] = Field(min_length=1)
    action: list[ActionKind] = Field(min_length=1)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _kebab(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"candidate name {value!r} must be lower-case kebab-case")
        return value

    @field_validator("observation", "action")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"repeats a kind: {value}")
        return value

    @model_validator(mode="after")
    def _against_the_library(self) -> CandidateConfig:
        problems = self._library_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- the algorithm ------------------------------------------------------------------------

    def algorithm_class(self) -> type[BaseAlgorithm]:
        """The algorithm class, imported on demand.

        Raises:
            CandidateError: when the package does not import or has no such algorithm.
        """
        return _algorithm_class(self.package, self.algorithm)

    @property
    def off_policy(self) -> bool:
        """Whether the algorithm learns from a replay buffer (DQN, SAC, TD3, ...)."""
        from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

        return issubclass(self.algorithm_class(), OffPolicyAlgorithm)

    @property
    def work_per_transition(self) -> float:
        """Samples pushed through a gradient update per env transition, a relative cost.

        The executors start the costliest runs first so that a stage does not end with one core
        finishing a slow SAC run while the others idle: an off-policy learner replays
        `batch_size * gradient_steps` samples every `train_freq * n_envs` transitions (SAC's
        defaults: 256 per transition), PPO revisits each transition `n_epochs` times, A2C once.
        """
        params = inspect.signature(self.algorithm_class().__init__).parameters

        def value(key: str, default: Any) -> Any:
            if key in self.hyperparams:
                return self.hyperparams[key]
            param = params.get(key)
            return default if param is None or param.default is param.empty else param.default

        if not self.off_policy:
            for passes in ("n_epochs", "n_critic_updates"):  # PPO; TRPO's critic
                if passes in params:
                    return float(value(passes, 1))
            return 1.0 if "n_steps" in params else 0.1  # A2C; ARS learns without gradients
        freq = value("train_freq", 1)
        steps, unit = (freq[0], freq[1]) if isinstance(freq, (list, tuple)) else (freq, "step")
        per_update = float(steps) * (100 if str(unit).startswith("episode") else 1) * self.n_envs
        gradient_steps = float(value("gradient_steps", 1))
        if gradient_steps < 0:
            gradient_steps = per_update
        return float(value("batch_size", 256)) * gradient_steps / max(per_update, 1.0)

    def compatibility(
        self, observation_space: SpaceLike, action_space: SpaceLike
    ) -> tuple[bool, str]:
        """Shortcut for `compatibility(self, observation_space, action_space)`."""
        return compatibility(self, observation_space, action_space)

    def resolve_policy(self, observation_space: SpaceLike) -> tuple[str, dict[str, Any]]:
        """The policy name and policy kwargs `make_model` uses on this observation space.

        Image observations get `CnnPolicy` instead of `MlpPolicy` where the algorithm has one;
        images under `NATURE_CNN_MIN_SIZE` pixels (MiniGrid's 7x7x3), or uint8 images whose
        bounds are not 0..255, get `SmallCNN` as features extractor unless the candidate sets
        its own `features_extractor_class`.
        """
        space = _as_model(observation_space)
        policy = self.policy
        kwargs = {k: _resolve_reference(k, v) for k, v in self.policy_kwargs.items()}
        if observation_kind(space) != "image":
            return policy, kwargs
        aliases = getattr(self.algorithm_class(), "policy_aliases", {})
        if policy == "MlpPolicy" and "CnnPolicy" in aliases:
            policy = "CnnPolicy"
        if policy == "CnnPolicy" and "features_extractor_class" not in kwargs:
            assert isinstance(space, BoxSpace)
            if _needs_small_cnn(space):
                kwargs["features_extractor_class"] = _small_cnn_class()
        return policy, kwargs

    def make_model(
        self,
        env: VecEnv,
        *,
        seed: int,
        device: str = "cpu",
        tensorboard_log: str | None = None,
        verbose: int = 0,
        max_replay_bytes: int = REPLAY_BUFFER_MAX_BYTES,
    ) -> BaseAlgorithm:
        """Build the SB3 model of this candidate on `env` (see `build.make_model`).

        Raises:
            CandidateError: when the env's spaces are not ones this candidate supports.
        """
        from ldm_autorl.candidates.build import make_model

        return make_model(
            self,
            env,
            seed=seed,
            device=device,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            max_replay_bytes=max_replay_bytes,
        )

    # -- internals ----------------------------------------------------------------------------

    def _library_problems(self) -> list[str]:
        try:
            cls = self.algorithm_class()
        except CandidateError as exc:
            return [str(exc)]
        problems: list[str] = []
        supported = ALGORITHM_ACTION_KINDS.get(self.algorithm)
        if supported is not None:
            for kind in self.action:
                if kind not in supported:
                    problems.append(
                        f"action kind {kind!r} is not supported by {self.algorithm} "
                        f"(it supports: {', '.join(k for k in ACTION_KINDS if k in supported)})"
                    )
        aliases: dict[str, type] = getattr(cls, "policy_aliases", {})
        if self.policy not in aliases:
            problems.append(
                f"unknown policy {self.policy!r} for {self.algorithm}; "
                f"known: {', '.join(aliases) or '(none)'}"
            )
        else:
            problems += _check_policy_kwargs(
                self.algorithm, aliases[self.policy], self.policy_kwargs
            )
        problems += self._check_hyperparams(cls)
        return problems

    def _check_hyperparams(self, cls: type[Any]) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        known = [n for n in params if n != "self" and n not in _RESERVED]
        problems: list[str] = []
        coerced = dict(self.hyperparams)
        for key, value in self.hyperparams.items():
            if key in _RESERVED:
                problems.append(f"hyperparameter {key!r} is not allowed: {_RESERVED[key]}")
                continue
            if key not in params:
                if not open_ended:
                    problems.append(
                        f"unknown hyperparameter {key!r} for {self.algorithm} "
                        f"(accepted: {', '.join(known)})"
                    )
                continue
            try:
                coerced[key] = _check_value(key, value, params[key].annotation)
            except ValueError as exc:
                problems.append(f"hyperparameter {key!r} for {self.algorithm}: {exc}")
        if not problems:
            self.hyperparams = coerced
        return problems
