import math
import sys
from collections import Counter
from importlib.metadata import EntryPoint
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from ldm_autorl import candidates as cmod
from ldm_autorl.candidates import (
    ENTRY_POINT_GROUP,
    CandidateConfig,
    CandidateError,
    CandidateRegistry,
    UnknownCandidateError,
    action_kind,
    compatibility,
    compatibility_table,
    observation_kind,
    registry,
)
from ldm_envs.errors import LDMError
from ldm_envs.spaces import (
    BoxSpace,
    DiscreteSpace,
    MultiBinarySpace,
    MultiDiscreteSpace,
    from_gymnasium,
)

MOD = __name__
SB3_ALGOS = {"A2C", "DDPG", "DQN", "PPO", "SAC", "TD3"}
CONTRIB_ALGOS = {"ARS", "QRDQN", "TQC", "TRPO"}

# -- toy envs ---------------------------------------------------------------------------------


class TinyImageEnv(gym.Env):
    """MiniGrid-sized uint8 image observations, discrete actions."""

    observation_space = gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, size: int = 7, continuous: bool = False):
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        if continuous:
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 1.0, False, self.t >= 8, {}


class MultiDiscreteEnv(gym.Env):
    """Vector observations, two 3-way choices per step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.MultiDiscrete([3, 3])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action[0] == 1), False, self.t >= 8, {}


def vec(make, n):
    return DummyVecEnv([make] * n)


ENV_MAKERS = {
    "cartpole": lambda: gym.make("CartPole-v1"),
    "pendulum": lambda: gym.make("Pendulum-v1"),
    "image": lambda: TinyImageEnv(),
    "multi-discrete": lambda: MultiDiscreteEnv(),
    "frozenlake": lambda: gym.make("FrozenLake-v1"),
}

# -- targets of hand-made entry points --------------------------------------------------------

BASE = {"algorithm": "PPO", "observation": ["vector"], "action": ["discrete"]}
GOOD = [{**BASE, "name": "ppo-mine"}]
BROKEN = [
    {**BASE, "name": "ppo-ok"},
    {**BASE, "name": "ppo2-old", "algorithm": "PPO2"},
    {**BASE, "name": "ppo-fast", "hyperparams": {"learnig_rate": 1e-3}},
    {**BASE, "name": "ppo-pixels", "observation": ["pixels"]},
    {**BASE, "name": "dqn-box", "algorithm": "DQN", "action": ["box"]},
    {**BASE, "name": "ppo-ok"},
    {**BASE, "name": "ppo-typed", "hyperparams": {"n_steps": "many"}},
    {**BASE, "name": "ppo-seeded", "hyperparams": {"seed": 3}},
    {**BASE, "name": "ppo-kwargs", "policy_kwargs": {"net_archh": [8]}},
    {**BASE, "name": "ppo-lstm", "policy": "LstmPolicy"},
    {**BASE, "name": "ppo-colour", "colour": "blue"},
    {**BASE, "name": "tqc-nowhere", "algorithm": "TQC", "package": "sb3_contribb"},
    {**BASE, "name": "ppo-act", "policy_kwargs": {"activation_fn": "nn.Tanhh"}},
    BASE,
    "not a mapping",
]
MISSING_FILE = Path("/nonexistent/candidates.yaml")
NOT_A_LIST = 42
YAML_TARGET = MISSING_FILE  # replaced per test


def make_good():
    return GOOD


def raises():
    raise RuntimeError("boom while listing candidates")


def ep(name, attr):
    return EntryPoint(name=name, value=f"{MOD}:{attr}", group=ENTRY_POINT_GROUP)


# -- discovery --------------------------------------------------------------------------------


def test_both_plugins_are_discovered_with_two_configs_per_algorithm():
    reg = registry(refresh=True)
    assert reg.broken == {}
    plugins = Counter()
    per_algo = Counter()
    for plugin, candidate in reg.candidates.values():
        plugins[plugin] += 1
        per_algo[candidate.algorithm] += 1
        expected = "sb3" if candidate.algorithm in SB3_ALGOS else "sb3-contrib"
        assert plugin == expected, candidate.name
        assert candidate.description
        assert candidate.name.startswith(candidate.algorithm.lower())
    assert set(per_algo) == SB3_ALGOS | CONTRIB_ALGOS
    assert all(n >= 2 for n in per_algo.values()), per_algo
    assert {f"{a.lower()}-default" for a in per_algo} <= set(reg.names())
    assert reg.get("dqn-default").hyperparams == {}
    assert reg.get("qrdqn-zoo").package == "sb3_contrib"
    assert reg.plugin_of("trpo-zoo") == "sb3-contrib"
    # the -default candidates keep the library's defaults: only n_envs is chosen
    for name in reg.names():
        if name.endswith("-default"):
            c = reg.get(name)
            assert c.hyperparams == {} and c.policy_kwargs == {}, name


def test_unknown_candidate_lists_the_known_ones():
    with pytest.raises(UnknownCandidateError, match=r"unknown candidate 'nope'; known .*ppo-zoo"):
        registry().get("nope")


def test_declared_kinds_are_honest():
    reg = registry()
    acts = {c.algorithm: set(c.action) for _, c in reg.candidates.values()}
    assert acts["DQN"] == acts["QRDQN"] == {"discrete"}
    assert acts["SAC"] == acts["TD3"] == acts["DDPG"] == acts["TQC"] == {"box"}
    assert acts["ARS"] == {"discrete", "box"}
    every = {"discrete", "box", "multi_discrete", "multi_binary"}
    assert acts["PPO"] == acts["A2C"] == acts["TRPO"] == every
    for _, c in reg.candidates.values():
        assert "discrete" in c.observation and "vector" in c.observation
        assert ("image" in c.observation) == (c.algorithm != "ARS")


def test_broken_candidates_are_named_and_never_hide_the_others():
    reg = CandidateRegistry.from_entry_points(
        [
            ep("good", "GOOD"),
            ep("broken", "BROKEN"),
            ep("missing-file", "MISSING_FILE"),
            ep("not-a-list", "NOT_A_LIST"),
            ep("raises", "raises"),
            EntryPoint(name="no-module", value="no_such_module:X", group=ENTRY_POINT_GROUP),
            ep("callable", "make_good"),
        ]
    )
    assert reg.names() == ["ppo-mine", "ppo-ok"]
    assert reg.candidates["ppo-ok"][0] == "broken"
    b = reg.broken
    assert b["broken:ppo2-old"].startswith(
        "plugin 'broken': candidate 'ppo2-old': unknown algorithm 'PPO2' in stable_baselines3"
    )
    assert "A2C, DDPG, DQN, PPO, SAC, TD3" in b["broken:ppo2-old"]
    assert b["broken:ppo-fast"].startswith(
        "plugin 'broken': candidate 'ppo-fast': unknown hyperparameter 'learnig_rate' for PPO"
    )
    assert "field observation.0" in b["broken:ppo-pixels"]
    assert "'vector', 'image' or 'discrete'" in b["broken:ppo-pixels"]
    assert (
        "action kind 'box' is not supported by DQN (it supports: discrete)" in b["broken:dqn-box"]
    )
    assert "'ppo-ok': duplicate name (already declared by plugin 'broken')" in b["broken:ppo-ok"]
    assert "hyperparameter 'n_steps' for PPO: expected an integer" in b["broken:ppo-typed"]
    assert "hyperparameter 'seed' is not allowed" in b["broken:ppo-seeded"]
    assert "unknown policy_kwargs key 'net_archh' for PPO" in b["broken:ppo-kwargs"]
    assert (
        "unknown policy 'LstmPolicy' for PPO; known: MlpPolicy, CnnPolicy" in b["broken:ppo-lstm"]
    )
    assert "field colour: Extra inputs are not permitted" in b["broken:ppo-colour"]
    assert "package 'sb3_contribb' cannot be imported" in b["broken:tqc-nowhere"]
    assert "policy_kwargs 'activation_fn': cannot import 'nn.Tanhh'" in b["broken:ppo-act"]
    assert "candidate '#13': field name: Field required" in b["broken:#13"]
    assert "candidate '#14': must be a mapping, got str" in b["broken:#14"]
    assert "does not exist" in b["missing-file"] or "No such file" in b["missing-file"]
    assert "plugin 'missing-file': cannot read candidates" in b["missing-file"]
    assert "must be a list of candidates" in b["not-a-list"]
    assert "boom while listing candidates" in b["raises"]
    assert "no_such_module" in b["no-module"]
    assert b["callable:ppo-mine"].endswith("duplicate name (already declared by plugin 'good')")
    # every message names its plugin
    for key, message in b.items():
        assert f"plugin {key.partition(':')[0]!r}" in message, key
    with pytest.raises(CandidateError, match="unknown hyperparameter 'learnig_rate'"):
        reg.get("ppo-fast")
    assert issubclass(CandidateError, LDMError)


def test_candidates_from_a_yaml_file(tmp_path, monkeypatch):
    path = tmp_path / "candidates.yaml"
    path.write_text(
        "candidates:\n"
        "  - {name: ppo-yaml, algorithm: PPO, observation: [vector], action: [discrete],\n"
        "     hyperparams: {learning_rate: 1e-3, n_steps: 6.4e1, clip_range: lin_0.2}}\n"
        "  - {name: dqn-yaml, algorithm: DQN, observation: [vector], action: [discrete],\n"
        "     hyperparams: {train_freq: [1, episode]},\n"
        "     policy_kwargs: {activation_fn: 'torch.nn:Tanh'}}\n"
        "  - {name: ars-bad, algorithm: ARS, package: sb3_contrib, observation: [vector],\n"
        "     action: [box], hyperparams: {n_delta: lin_3}}\n"
    )
    monkeypatch.setattr(sys.modules[MOD], "YAML_TARGET", path)
    reg = CandidateRegistry.from_entry_points([ep("yaml", "YAML_TARGET")])
    assert reg.names() == ["dqn-yaml", "ppo-yaml"]
    hp = reg.get("ppo-yaml").hyperparams
    assert hp["learning_rate"] == pytest.approx(1e-3)  # YAML reads 1e-3 as a string
    assert hp["n_steps"] == 64 and isinstance(hp["n_steps"], int)
    assert reg.get("dqn-yaml").hyperparams["train_freq"] == (1, "episode")
    assert "'n_delta' for ARS: does not take a schedule like 'lin_3'" in reg.broken["yaml:ars-bad"]
    path.write_text("- [unclosed")
    reg = CandidateRegistry.from_entry_points([ep("yaml", "YAML_TARGET")])
    assert "plugin 'yaml': cannot read candidates" in reg.broken["yaml"]


# -- kinds and compatibility ------------------------------------------------------------------

CARTPOLE = from_gymnasium(gym.make("CartPole-v1").observation_space)
IMAGE = BoxSpace(shape=(7, 7, 3), dtype="uint8", low=0, high=255)
BIG_IMAGE = BoxSpace(shape=(64, 64, 3), dtype="uint8", low=0, high=255)
PENDULUM_ACT = from_gymnasium(gym.make("Pendulum-v1").action_space)


def test_kinds_of_real_spaces():
    assert observation_kind(CARTPOLE) == "vector"
    assert observation_kind(IMAGE) == "image"
    assert observation_kind(gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)) == "image"
    assert observation_kind(BoxSpace(shape=(7, 7), dtype="uint8", low=0, high=255)) == "vector"
    assert observation_kind(DiscreteSpace(n=16)) == "discrete"
    assert observation_kind(MultiDiscreteSpace(nvec=[3, 4])) == "discrete"
    assert observation_kind(MultiBinarySpace(n=5)) == "vector"
    assert action_kind(gym.spaces.Discrete(2)) == "discrete"
    assert action_kind(PENDULUM_ACT) == "box"
    assert action_kind(MultiDiscreteSpace(nvec=[3, 3])) == "multi_discrete"
    assert action_kind(gym.spaces.MultiBinary(4)) == "multi_binary"


def ok_names(obs, act):
    return {c.name for c in registry().compatible_with(obs, act)}


def test_compatibility_over_real_spaces():
    reg = registry()
    discrete2 = DiscreteSpace(n=2)
    cartpole = ok_names(CARTPOLE, discrete2)
    assert {"dqn-default", "qrdqn-zoo", "ppo-zoo", "a2c-default", "trpo-zoo", "ars-linear"} <= (
        cartpole
    )
    assert not cartpole & {"sac-default", "td3-noise", "ddpg-default", "tqc-short"}
    ok, reason = compatibility(reg.get("dqn-default"), CARTPOLE, PENDULUM_ACT)
    assert not ok and reason == "DQN supports discrete actions; this env has box[1] float32"
    ok, reason = compatibility(reg.get("sac-short"), CARTPOLE, discrete2)
    assert not ok and reason == "SAC supports box actions; this env has discrete(2)"
    pendulum = ok_names(from_gymnasium(gym.make("Pendulum-v1").observation_space), PENDULUM_ACT)
    expected = {
        "sac-short",
        "td3-default",
        "ddpg-noise",
        "tqc-default",
        "ppo-default",
        "ars-default",
    }
    assert expected <= pendulum
    assert not pendulum & {"dqn-default", "qrdqn-default"}
    # images: everything but ARS, with the policy said in the reason
    image = ok_names(IMAGE, DiscreteSpace(n=7))
    assert image == {
        n for n in reg.names() if n.split("-")[0] in {"ppo", "a2c", "dqn", "qrdqn", "trpo"}
    }
    ok, reason = compatibility(reg.get("ars-default"), IMAGE, DiscreteSpace(n=7))
    assert not ok
    assert reason == "ARS supports vector, discrete observations; this env has image[7, 7, 3] uint8"
    ok, reason = compatibility(reg.get("ppo-default"), IMAGE, DiscreteSpace(n=7))
    assert ok and reason.endswith("(CnnPolicy with SmallCNN, 7x7 < 36)")
    ok, reason = compatibility(reg.get("dqn-zoo"), BIG_IMAGE, DiscreteSpace(n=15))
    assert ok and reason.endswith("(CnnPolicy with NatureCNN)")
    # multi-discrete and multi-binary actions: on-policy gradient methods only
    md = ok_names(CARTPOLE, MultiDiscreteSpace(nvec=[3, 3]))
    assert {n.split("-")[0] for n in md} == {"ppo", "a2c", "trpo"}
    ok, reason = compatibility(reg.get("ars-default"), CARTPOLE, MultiDiscreteSpace(nvec=[3, 3]))
    assert reason == "ARS supports discrete, box actions; this env has multi_discrete[3, 3]"
    mb = ok_names(CARTPOLE, MultiBinarySpace(n=4))
    assert {n.split("-")[0] for n in mb} == {"ppo", "a2c", "trpo"}
    # discrete observations are one-hot encoded by SB3: everyone takes them
    assert len(ok_names(DiscreteSpace(n=16), DiscreteSpace(n=4))) == len(cartpole)


def test_incompatibility_beyond_kinds():
    reg = registry()
    unbounded = BoxSpace(shape=(2,), low=-math.inf, high=math.inf)
    ok, reason = compatibility(reg.get("sac-default"), CARTPOLE, unbounded)
    assert not ok and "SAC squashes actions into the box bounds, which must be finite" in reason
    assert compatibility(reg.get("ppo-default"), CARTPOLE, unbounded)[0]
    ok, reason = compatibility(reg.get("ppo-default"), CARTPOLE, DiscreteSpace(n=3, start=1))
    assert not ok and "start at 0" in reason and "action space" in reason
    ok, reason = compatibility(reg.get("dqn-default"), DiscreteSpace(n=3, start=-1), unbounded)
    assert not ok
    assert "DQN supports discrete actions" in reason and "observation space" in reason


def test_compatibility_table_of_the_toy_library(toy):
    df = compatibility_table(toy, registry())
    assert df.columns == ["env_id", "candidate", "compatible", "reason"]
    assert df.height == len(toy.envs) * len(registry().names())
    row = df.filter((df["env_id"] == "Pendulum-v1") & (df["candidate"] == "dqn-zoo")).row(
        0, named=True
    )
    assert row["compatible"] is False and "DQN supports discrete actions" in row["reason"]
    pendulum_ok = df.filter((df["env_id"] == "Pendulum-v1") & df["compatible"])["candidate"]
    assert "sac-short" in pendulum_ok.to_list()
    unprobed = [e.id for e in toy.envs if not e.probed]
    for env_id in unprobed:
        rows = df.filter(df["env_id"] == env_id)
        assert not rows["compatible"].any()
        assert "ldm-envs probe toy" in rows["reason"][0]


# -- building and training models -------------------------------------------------------------


@pytest.mark.parametrize("env_name", list(ENV_MAKERS))
def test_make_model_for_every_compatible_candidate(env_name):
    make = ENV_MAKERS[env_name]
    probe = make()
    compatible = registry().compatible_with(probe.observation_space, probe.action_space)
    assert compatible
    for candidate in compatible:
        env = vec(make, candidate.n_envs)
        model = candidate.make_model(env, seed=0)
        assert type(model).__name__ == candidate.algorithm
        assert model.n_envs == candidate.n_envs
        if env_name == "image":
            assert type(model.policy).__name__ in {"ActorCriticCnnPolicy", "CnnPolicy"}
            extractors = [m for m in model.policy.modules() if type(m).__name__ == "SmallCNN"]
            assert extractors, candidate.name
        obs = env.reset()
        actions, _ = model.predict(obs, deterministic=True)
        assert len(actions) == candidate.n_envs
        env.close()


def test_make_model_refuses_an_incompatible_env():
    env = vec(ENV_MAKERS["pendulum"], 1)
    with pytest.raises(CandidateError, match="cannot run on this env: DQN supports discrete"):
        registry().get("dqn-default").make_model(env, seed=0)


def tweak(name, **hyperparams):
    c = registry().get(name)
    return c.model_copy(update={"hyperparams": {**c.hyperparams, **hyperparams}})


def test_learn_a_few_steps(tmp_path):
    cases = [
        (tweak("ppo-zoo", n_steps=8, batch_size=32, n_epochs=1), "cartpole"),
        (
            tweak("dqn-zoo", learning_starts=16, train_freq=4, gradient_steps=1, batch_size=8),
            "image",
        ),
        (tweak("sac-short", learning_starts=16, batch_size=16, gradient_steps=1), "pendulum"),
        (tweak("trpo-zoo", n_steps=8, batch_size=32, n_critic_updates=1), "multi-discrete"),
        (tweak("td3-noise", learning_starts=16, batch_size=16), "pendulum"),
    ]
    for candidate, env_name in cases:
        env = vec(ENV_MAKERS[env_name], candidate.n_envs)
        model = candidate.make_model(env, seed=1)
        model.learn(64)
        assert model.num_timesteps >= 64, candidate.name
    # a model with the SmallCNN extractor saves and loads (the class is found by name)
    path = tmp_path / "dqn.zip"
    model = cases[1][0].make_model(vec(ENV_MAKERS["image"], 1), seed=0)
    model.save(path)
    loaded = type(model).load(path)
    assert type(loaded.policy.q_net.features_extractor) is cmod.SmallCNN


def test_hyperparameter_conveniences():
    env = vec(ENV_MAKERS["pendulum"], 8)
    model = registry().get("a2c-zoo").make_model(env, seed=0)
    assert model.lr_schedule(1.0) == pytest.approx(7e-4)
    assert model.lr_schedule(0.5) == pytest.approx(3.5e-4)
    td3 = registry().get("td3-noise").make_model(vec(ENV_MAKERS["pendulum"], 1), seed=0)
    assert type(td3.action_noise).__name__ == "NormalActionNoise"
    ddpg = registry().get("ddpg-noise").make_model(vec(ENV_MAKERS["pendulum"], 1), seed=0)
    assert type(ddpg.action_noise).__name__ == "OrnsteinUhlenbeckActionNoise"


def test_images_use_naturecnn_when_big_enough_and_cap_the_replay_buffer():
    make = lambda: TinyImageEnv(size=40)  # noqa: E731
    model = registry().get("dqn-default").make_model(vec(make, 1), seed=0, max_replay_bytes=1 << 20)
    assert type(model.policy.q_net.features_extractor).__name__ == "NatureCNN"
    assert model.buffer_size == 1000  # 1 MiB holds ~109 such transitions; 1000 is the floor
    model = (
        registry()
        .get("sac-short")
        .make_model(vec(lambda: TinyImageEnv(size=40, continuous=True), 1), seed=0)
    )
    assert type(model.policy).__name__ == "CnnPolicy"
    assert model.buffer_size == 50000  # 50k x 2 x 4800 bytes fits in the default 1 GiB


def test_candidate_config_is_validated_on_construction():
    with pytest.raises(ValueError, match="unknown hyperparameter 'gama' for SAC"):
        CandidateConfig(
            name="sac-x",
            algorithm="SAC",
            observation=["vector"],
            action=["box"],
            hyperparams={"gama": 0.9},
        )
    with pytest.raises(ValueError, match="kebab-case"):
        CandidateConfig(name="PPO Big", algorithm="PPO", observation=["vector"], action=["box"])
    c = CandidateConfig(name="ppo-x", algorithm="PPO", observation=["vector"], action=["box"])
    assert c.algorithm_class().__name__ == "PPO" and not c.off_policy
    reg = CandidateRegistry()
    reg.add(c)
    with pytest.raises(CandidateError, match="duplicate name"):
        reg.add(c)
    assert reg.compatible_with(CARTPOLE, PENDULUM_ACT) == [c]


def test_work_per_transition_orders_replay_learners_first():
    reg = registry()
    cost = {name: reg.get(name).work_per_transition for name in reg.names()}
    # SB3 defaults: SAC replays a 256-sample batch every step, PPO revisits each transition in
    # 10 epochs, A2C once, ARS takes no gradient step
    assert cost["sac-default"] == pytest.approx(256.0)
    assert cost["ppo-default"] == pytest.approx(10.0)
    assert cost["a2c-default"] == pytest.approx(1.0)
    assert cost["dqn-default"] == pytest.approx(32 / 4)  # train_freq 4, batch 32
    assert cost["dqn-zoo"] == pytest.approx(64 * 128 / 256)  # gradient_steps 128 every 256
    assert min(cost[n] for n in cost if n.startswith(("sac", "td3", "ddpg", "tqc"))) > max(
        cost[n] for n in cost if n.startswith(("ppo", "a2c", "trpo", "ars", "dqn", "qrdqn"))
    )
    episodic = CandidateConfig(
        name="td3-episodic",
        algorithm="TD3",
        hyperparams={"train_freq": [1, "episode"], "gradient_steps": -1, "batch_size": 100},
        observation=["vector"],
        action=["box"],
    )
    assert episodic.work_per_transition == pytest.approx(100.0)  # one update per step collected
