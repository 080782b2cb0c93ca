"""The env worker: hosts a batch of envs inside a library's isolated environment.

It is one self-contained file run by path (`python worker.py --connect SOCK`) with the isolated
interpreter, so it depends only on the standard library and NumPy and keeps to Python 3.6 syntax.

Why one file of ~900 lines, against the ~600-line rule of the other modules: it is copied as is
into every isolated environment (a venv, a docker image; the image tag hashes its source) and
run there by path, on Pythons as old as 3.6 that cannot import ldm-envs. A package would have
to be installed or put on the path in each environment, and its parts kept in step with the
host's. So the wire format, the env adapters and the serving loop stay here together.
The wire format lives here too (the host imports `pack`/`recv_message` from this module): a fixed
prefix, a small JSON header, then raw array buffers. Nothing is ever pickled.

Semantics are Gymnasium's whatever the library speaks: gym 0.21 (`done` + `TimeLimit.truncated`)
and gym 0.26 are adapted to terminated/truncated; episodes auto-reset in the same step, the last
observation travelling as `final_obs`. A step may `hold` some envs: they are not stepped and
answer their first observation again with reward 0, which is how the host offers Gymnasium's
next-step autoreset (the step after an episode end ignores that env's action).
"""

import importlib
import json
import mmap
import os
import platform
import random
import select
import socket
import struct
import sys
import threading
import time
import traceback
import warnings

import numpy as np

PROTOCOL_VERSION = 2
MAGIC = b"LDM2"
# prefix: magic, JSON header length, number of buffers; then per buffer a fixed record (dtype
# string, ndim, byte length) followed by its ndim dims; then the header; then the buffers.
_PREFIX = struct.Struct("<4sII")
_BUFFER = struct.Struct("<4sBQ")
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=True)
_HEADER_CACHE = {}  # type: dict


def _encode_header(header):
    # the hot headers ({"cmd": "step"}, {"stacked": true}) are encoded once
    key = tuple(header.items()) if len(header) <= 2 else None
    if key is not None:
        try:
            return _HEADER_CACHE[key]
        except (KeyError, TypeError):
            pass
    body = _ENCODER.encode(header).encode("utf-8")
    if key is not None and len(_HEADER_CACHE) < 256:
        try:
            _HEADER_CACHE[key] = body
        except TypeError:
            pass
    return body


def pack(header, arrays=()):
    """Serialize a header dict and a sequence of arrays into the frames of one message."""
    metas = []
    buffers = []
    for arr in arrays:
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        metas.append(_BUFFER.pack(arr.dtype.str.encode("ascii"), arr.ndim, arr.nbytes))
        if arr.ndim:
            metas.append(struct.pack("<%dQ" % arr.ndim, *arr.shape))
        buffers.append(arr.data.cast("B") if arr.nbytes else b"")
    body = _encode_header(header)
    return [_PREFIX.pack(MAGIC, len(body), len(buffers)), b"".join(metas), body] + buffers


def send_message(sock, header, arrays=()):
    """Send one message; large buffers go out without being joined into one bytes object."""
    frames = pack(header, arrays)
    if sum(len(f) for f in frames[3:]) <= 65536:
        sock.sendall(b"".join(frames))
    else:
        sock.sendall(b"".join(frames[:3]))
        for frame in frames[3:]:
            sock.sendall(frame)


class Channel(object):
    """Buffered message reader over a blocking socket, spinning briefly before sleeping.

    A reply usually arrives within microseconds; sleeping in `recv` costs a scheduler wake-up
    (~40 us per direction on a small VM), so a side polls without blocking for up to `spin`
    seconds first, then falls back to `select` with the caller's timeout. When recent messages
    came after a longer but regular gap (SB3 computing its policy between steps), it naps in
    `select` until shortly before the next one is due and spins only then, so it neither steals
    a core from the host nor pays a cold wake-up; after long pauses it just sleeps.
    """

    def __init__(self, sock, spin=0.0):
        self.sock = sock
        self.spin = spin
        self.recent_wait = 0.0
        self.buf = bytearray(1 << 16)
        self.start = 0
        self.end = 0

    def send(self, header, arrays=()):
        send_message(self.sock, header, arrays)

    def buffered(self):
        """Whether bytes of a next message were already read from the socket."""
        return self.end > self.start

    def _ensure(self, need, deadline):
        while self.end - self.start < need:
            if self.start + need > len(self.buf):
                pending = self.buf[self.start:self.end]
                if need > len(self.buf):
                    self.buf = bytearray(max(need, 2 * len(self.buf)))
                self.buf[:len(pending)] = pending
                self.start, self.end = 0, len(pending)
            self.end += self._recv_some(deadline)

    def _note(self, waited):
        self.recent_wait = 0.7 * self.recent_wait + 0.3 * waited

    def _recv_some(self, deadline):
        view = memoryview(self.buf)[self.end:]
        sock = self.sock
        try:
            k = sock.recv_into(view, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            k = -1
        if k < 0:
            t0 = time.perf_counter()
            expected = self.recent_wait
            if self.spin > 0 and self.spin <= expected < 20 * self.spin:
                # a regular, longer gap (the host runs a policy between steps): nap until just
                # before the message is due, then spin; an early message still wakes us at once
                select.select([sock], [], [], expected - self.spin)
            if self.spin > 0 and expected < 20 * self.spin:
                stop = time.perf_counter() + self.spin
                while k < 0 and time.perf_counter() < stop:
                    try:
                        k = sock.recv_into(view, 0, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        pass
            if k < 0:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    ready, _, _ = select.select([sock], [], [], max(0.0, remaining))
                    if not ready:
                        raise TimeoutError("no message within the time limit")
                k = sock.recv_into(view)
            self._note(time.perf_counter() - t0)
        if k == 0:
            raise ConnectionError("peer closed the connection")
        return k

    def recv(self, timeout=None):
        """Receive one message: returns (header dict, list of arrays that own their memory).

        Offsets are kept relative to `self.start`, since `_ensure` may compact the buffer.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._ensure(_PREFIX.size, deadline)
        magic, body_len, n_buffers = _PREFIX.unpack_from(self.buf, self.start)
        if magic != MAGIC:
            raise ConnectionError("bad magic %r: not an ldm worker stream" % (magic,))
        rel = _PREFIX.size
        metas = []
        for _ in range(n_buffers):
            self._ensure(rel + _BUFFER.size, deadline)
            dtype, ndim, nbytes = _BUFFER.unpack_from(self.buf, self.start + rel)
            rel += _BUFFER.size
            shape = ()
            if ndim:
                self._ensure(rel + 8 * ndim, deadline)
                shape = struct.unpack_from("<%dQ" % ndim, self.buf, self.start + rel)
                rel += 8 * ndim
            metas.append((dtype.rstrip(b"\x00").decode("ascii"), shape, nbytes))
        self._ensure(rel + body_len + sum(m[2] for m in metas), deadline)
        buf = self.buf
        at = self.start + rel
        header = json.loads(buf[at:at + body_len].decode("utf-8")) if body_len else {}
        at += body_len
        arrays = []
        for dtype, shape, nbytes in metas:
            # slicing a bytearray copies: each array owns writable memory
            arrays.append(np.frombuffer(buf[at:at + nbytes], dtype=dtype).reshape(shape))
            at += nbytes
        self.start = at
        if self.start == self.end:
            self.start = self.end = 0
        return header, arrays


# ---------------------------------------------------------------------------------------------
# Spaces: described as plain dicts, whatever gym flavour defines them
# ---------------------------------------------------------------------------------------------


def _kind(space):
    return type(space).__name__


def _compress(values):
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size and np.all(flat == flat[0]):
        return float(flat[0])
    return [float(v) for v in flat]


def describe_space(space):
    """Describe a leaf space as the plain dict the host's pydantic models validate."""
    kind = _kind(space)
    if kind == "Box":
        return {"type": "box", "shape": [int(d) for d in space.shape],
                "dtype": np.dtype(space.dtype).name,
                "low": _compress(space.low), "high": _compress(space.high)}
    if kind == "Discrete":
        return {"type": "discrete", "n": int(space.n), "start": int(getattr(space, "start", 0))}
    if kind == "MultiDiscrete":
        nvec = np.asarray(space.nvec)
        if nvec.ndim != 1:
            raise ValueError("MultiDiscrete with shape %s is not flat" % (nvec.shape,))
        out = {"type": "multi_discrete", "nvec": [int(n) for n in nvec]}
        start = getattr(space, "start", None)
        if start is not None and np.any(np.asarray(start) != 0):
            out["start"] = [int(s) for s in np.asarray(start)]
        return out
    if kind == "MultiBinary":
        return {"type": "multi_binary", "n": int(np.prod(np.atleast_1d(space.n)))}
    raise ValueError("unsupported space %s" % kind)


def _widened(env_id, obs, bounds):
    """The observation description with the manifest's `observation_bounds` in place.

    Only the declared bounds change: values are neither clipped nor rescaled.
    """
    if not bounds or (bounds.get("low") is None and bounds.get("high") is None):
        return obs
    if obs["type"] != "box":
        raise ValueError("%s: observation_bounds need a Box observation, the env has %s"
                         % (env_id, obs["type"]))
    size = int(np.prod(obs["shape"]))
    out = dict(obs)
    for key in ("low", "high"):
        value = bounds.get(key)
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.float64).ravel()
        if arr.size not in (1, size):
            raise ValueError("%s: observation_bounds.%s has %d values; the observation has "
                             "%d dims (give one value, or one per dim)"
                             % (env_id, key, arr.size, size))
        out[key] = _compress(np.broadcast_to(arr, (size,)))
    return out


def _is_image(space):
    return (_kind(space) == "Box" and np.dtype(space.dtype) == np.uint8
            and len(space.shape) == 3)


def _children(space):
    kind = _kind(space)
    if kind == "Dict":
        return list(space.spaces.items())
    if kind == "Tuple":
        return [(str(i), s) for i, s in enumerate(space.spaces)]
    return None


class Flattener(object):
    """Turns Dict/Tuple observations into one float32 vector; leaves leaf spaces alone.

    Discrete and MultiDiscrete parts become their integer values (not one-hot) so they cost one
    dim each, as the model tokenizes discrete values by lookup.
    """

    def __init__(self, space, path="observation"):
        self.children = _children(space)
        self.space = space
        if self.children is None:
            return
        self.parts = []
        lows, highs = [], []
        for key, sub in self.children:
            where = "%s[%r]" % (path, key)
            if _is_image(sub):
                raise ValueError(
                    "%s is an image inside a %s space: add a wrapper that selects it "
                    "(for MiniGrid: minigrid.wrappers:ImgObsWrapper)" % (where, _kind(space)))
            if _children(sub) is not None:
                child = Flattener(sub, where)
                self.parts.append((key, child))
                lows.append(np.asarray(child.low))
                highs.append(np.asarray(child.high))
                continue
            kind = _kind(sub)
            if kind == "Box":
                lo = np.asarray(sub.low, np.float64).ravel()
                hi = np.asarray(sub.high, np.float64).ravel()
            elif kind == "Discrete":
                start = int(getattr(sub, "start", 0))
                lo = np.array([start], np.float64)
                hi = np.array([start + int(sub.n) - 1], np.float64)
            elif kind == "MultiDiscrete":
                nvec = np.asarray(sub.nvec, np.float64).ravel()
                lo, hi = np.zeros_like(nvec), nvec - 1
            elif kind == "MultiBinary":
                n = int(np.prod(np.atleast_1d(sub.n)))
                lo, hi = np.zeros(n), np.ones(n)
            else:
                raise ValueError("%s: unsupported space %s" % (where, kind))
            self.parts.append((key, None))
            lows.append(lo)
            highs.append(hi)
        self.low = np.concatenate(lows).astype(np.float32)
        self.high = np.concatenate(highs).astype(np.float32)

    @property
    def active(self):
        return self.children is not None

    def describe(self):
        if not self.active:
            return describe_space(self.space)
        return {"type": "box", "shape": [int(self.low.size)], "dtype": "float32",
                "low": _compress(self.low), "high": _compress(self.high)}

    def _flat_parts(self, obs):
        for key, child in self.parts:
            value = obs[key] if _kind(self.space) == "Dict" else obs[int(key)]
            if child is not None:
                for part in child._flat_parts(value):
                    yield part
            else:
                yield np.asarray(value, dtype=np.float32).ravel()

    def __call__(self, obs):
        if not self.active:
            return obs
        return np.concatenate(list(self._flat_parts(obs))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Hosting envs
# ---------------------------------------------------------------------------------------------


def _import_target(target):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _jsonable(value, depth=0):
    """Best-effort conversion of an info value to JSON (arrays become lists, objects repr)."""
    if depth > 6:
        return repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 4096 else repr(value)
    if isinstance(value, dict):
        return dict((str(k), _jsonable(v, depth + 1)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)


#: What gym 0.26's make() wraps every env in; each expects the 0.26 step (5 values).
_GYM26_MAKE_WRAPPERS = ("TimeLimit", "OrderEnforcing", "PassiveEnvChecker")


class HostedEnv(object):
    """One env plus the adapters that make it speak Gymnasium semantics."""

    def __init__(self, gym, api, request):
        self.id = request["id"]
        self.api = api
        self.gym = gym
        self.request = request
        self.max_steps = request.get("max_episode_steps")
        self.seed_kwarg = request.get("seed_kwarg")
        self.remake_on_reset = bool(request.get("remake_on_reset"))
        self.env = self._make(None)
        self.obs_flat = Flattener(self.env.observation_space)
        self.flattens = self.obs_flat.active
        if _children(self.env.action_space) is not None:
            raise ValueError("%s: Dict/Tuple action spaces are not supported" % self.id)
        self.action_kind = _kind(self.env.action_space)
        self.obs_dtype = None
        self.first_obs = None
        self.steps = 0
        self.ep_return = 0.0

    def _make(self, seed):
        kwargs = dict(self.request.get("kwargs") or {})
        if self.max_steps and self.api != "gym21":
            kwargs["max_episode_steps"] = self.max_steps
        if seed is not None and self.seed_kwarg:
            kwargs[self.seed_kwarg] = int(seed)
        env = self.gym.make(self.request["gym_id"], **kwargs)
        if self.api == "gym21":
            env = self._peel_new_api_wrappers(env)
        for target in self.request.get("wrappers") or []:
            if isinstance(target, dict):  # {"name": "module:Class", "kwargs": {...}}
                env = _import_target(target["name"])(env, **(target.get("kwargs") or {}))
            else:
                env = _import_target(target)(env)
        return env

    def _peel_new_api_wrappers(self, env):
        """Unwrap what gym 0.26's make() adds, for a library that still speaks 0.21 under it.

        nes-py 8 (gym-super-mario-bros) steps with 4 values while gym 0.26's TimeLimit unpacks
        5, so its envs fail at their first step; the worker enforces episode limits itself (a
        registered one is kept) and adapts `done`, so nothing is lost. Gym 0.21's own wrappers
        speak 0.21 and stay (its TimeLimit sets the `TimeLimit.truncated` read in `step`).
        """
        version = getattr(self.gym, "__version__", "0")
        try:
            major_minor = tuple(int(part) for part in version.split(".")[:2])
        except ValueError:
            return env
        while major_minor >= (0, 26) and type(env).__name__ in _GYM26_MAKE_WRAPPERS:
            if type(env).__name__ == "TimeLimit" and not self.max_steps:
                self.max_steps = getattr(env, "_max_episode_steps", None)
            env = env.env
        return env

    def spaces(self):
        obs = _widened(self.id, self.obs_flat.describe(), self.request.get("observation_bounds"))
        self.obs_dtype = np.dtype(obs["dtype"]) if obs["type"] == "box" else np.dtype(np.int64)
        if obs["type"] in ("multi_binary",):
            self.obs_dtype = np.dtype(np.int8)
        return {"observation": obs, "action": describe_space(self.env.action_space),
                "raw_observation": _kind(self.env.observation_space)}

    def _obs(self, raw):
        if type(raw) is np.ndarray and raw.dtype is self.obs_dtype and not self.flattens:
            return raw  # the hot case, as np.asarray would return it, without three calls
        return np.asarray(self.obs_flat(raw), dtype=self.obs_dtype)

    def reset(self, seed, explicit=True):
        """Start an episode; `explicit` is False for the auto-reset after an episode ends.

        Libraries seeded through a make() argument (procgen's rand_seed) are re-made with it,
        and so are libraries that ignore a reset in mid-episode (`remake_on_reset`).
        """
        self.steps = 0
        self.ep_return = 0.0
        if explicit and ((seed is not None and self.seed_kwarg) or self.remake_on_reset):
            self.env.close()
            self.env = self._make(seed)
            seed = None if self.seed_kwarg else seed
        if seed is not None:
            # many libraries draw from the global generators, not the env's own (jsbgym's
            # target headings, most gym 0.21 code): a seeded reset seeds those too
            random.seed(int(seed))
            np.random.seed(int(seed) % (2 ** 32))
        if self.api == "gym21":
            if seed is not None:
                seed_method = getattr(self.env, "seed", None)
                if seed_method is not None:
                    try:
                        seed_method(int(seed))
                    except TypeError:
                        pass  # seed() takes no argument here: the globals above still apply
            raw, info = self.env.reset(), {}
        else:
            out = self.env.reset(seed=None if seed is None else int(seed))
            raw, info = out
        obs = self._obs(raw)
        self.first_obs = obs  # what a held step answers (see `EnvGroup.cmd_step`)
        return obs, info

    def _action(self, action):
        space = self.env.action_space
        if self.action_kind == "Discrete":
            if isinstance(action, int):
                return action
            return int(np.asarray(action).reshape(-1)[0])
        if self.action_kind == "Box":
            return np.asarray(action, dtype=space.dtype).reshape(space.shape)
        if self.action_kind == "MultiBinary":
            return np.asarray(action).reshape(space.shape).astype(np.int8)
        return np.asarray(action).reshape(-1).astype(np.int64)

    def step(self, action):
        out = self.env.step(self._action(action))
        if self.api == "gym21":
            raw, reward, done, info = out
            info = dict(info or {})
            truncated = bool(done and info.pop("TimeLimit.truncated", False))
            terminated = bool(done) and not truncated
        else:
            raw, reward, terminated, truncated, info = out
            terminated, truncated = bool(terminated), bool(truncated)
        self.steps += 1
        reward = float(reward)
        self.ep_return += reward
        if self.max_steps and self.steps >= self.max_steps and not terminated:
            truncated = True
        return self._obs(raw), reward, terminated, truncated, info

    def close(self):
        try:
            self.env.close()
        except Exception:
            pass


class EnvGroup(object):
    """All envs of one worker; `handle` answers one request with one reply.

    The inprocess backend calls `handle` directly; the socket loop below calls it for the venv
    and docker backends, so all three share these semantics.
    """

    def __init__(self):
        self.envs = []
        self.gym = None
        self.stacked = True
        self.spaces = []

    def handle(self, header, arrays):
        cmd = header.get("cmd")
        method = getattr(self, "cmd_" + str(cmd), None)
        if method is None:
            raise ValueError("unknown command %r" % (cmd,))
        return method(header, arrays)

    def cmd_hello(self, header, arrays):
        return {"protocol": PROTOCOL_VERSION, "python": sys.version.split()[0],
                "numpy": np.__version__, "pid": os.getpid(),
                "machine": platform.machine()}, []

    def cmd_make(self, header, arrays):
        for key, value in (header.get("env_vars") or {}).items():
            os.environ[key] = str(value)
        api = header["api"]
        self.gym = importlib.import_module("gymnasium" if api == "gymnasium" else "gym")
        for module in header.get("imports") or []:
            importlib.import_module(module)
        self.close_envs()
        spaces = []
        for i, request in enumerate(header["envs"]):
            try:
                env = HostedEnv(self.gym, api, request)
                self.envs.append(env)
                spaces.append(env.spaces())
            except Exception as exc:
                exc.env_index = i
                raise
        self.stacked = len(set(json.dumps(s["observation"], sort_keys=True) for s in spaces)) <= 1
        self.spaces = spaces
        return {"spaces": spaces, "stacked": self.stacked}, []

    def _pack_obs(self, obs_list):
        if self.stacked:
            return [np.array(obs_list)]
        return list(obs_list)

    def cmd_reset(self, header, arrays):
        seeds = header.get("seeds") or [None] * len(self.envs)
        indices = header.get("indices")
        indices = list(range(len(self.envs))) if indices is None else indices
        obs, infos = [], {}
        for i, seed in zip(indices, seeds):
            try:
                o, info = self.envs[i].reset(seed)
            except Exception as exc:
                exc.env_index = i
                raise
            obs.append(o)
            if info:
                infos[str(i)] = _jsonable(info)
        if len(indices) != len(self.envs):
            return {"infos": infos, "stacked": False}, obs
        return {"infos": infos, "stacked": self.stacked}, self._pack_obs(obs)

    def cmd_step(self, header, arrays):
        actions = arrays[0]
        sizes = header.get("sizes") if header else None
        if sizes:  # envs with actions of different sizes: one flat vector
            actions = np.split(actions, np.cumsum(sizes)[:-1].tolist())
        elif actions.ndim == 1 and actions.dtype.kind in "iu":
            actions = actions.tolist()  # plain ints: the cheapest thing to hand a Discrete env
        # held envs (the host's next-step autoreset) are not stepped: their action is ignored
        hold = set(header.get("hold") or ()) if header else ()
        rewards, terminated, truncated = [], [], []
        obs, finals, infos, final_infos, done_idx = [], [], {}, {}, []
        for i, env in enumerate(self.envs):
            if hold and i in hold:
                obs.append(env.first_obs)
                rewards.append(0.0)
                terminated.append(False)
                truncated.append(False)
                continue
            try:
                o, r, term, trunc, info = env.step(actions[i])
                rewards.append(r)
                terminated.append(term)
                truncated.append(trunc)
                if term or trunc:
                    done_idx.append(i)
                    finals.append(o)
                    fin = _jsonable(info) if info else {}
                    fin["episode"] = {"r": env.ep_return, "l": env.steps}
                    final_infos[str(i)] = fin
                    o, info = env.reset(None, explicit=False)
            except Exception as exc:
                exc.env_index = i
                raise
            obs.append(o)
            if info:
                infos[str(i)] = _jsonable(info)
        # rewards, terminated and truncated travel as the rows of one float64 buffer
        out = self._pack_obs(obs) + [np.array([rewards, terminated, truncated], np.float64)]
        out += finals
        reply = {"stacked": self.stacked}  # empty keys are left out: the host defaults them
        if infos:
            reply["infos"] = infos
        if done_idx:
            reply["done"] = done_idx
            reply["final_infos"] = final_infos
        return reply, out

    def cmd_probe(self, header, arrays):
        reply, _ = self.cmd_make(header, arrays)
        # one real reset + step per env proves the declared spaces match what comes back
        checks = []
        for env in self.envs:
            o, _info = env.reset(0)
            a = env.env.action_space.sample()
            o2, _r, _te, _tr, _i = env.step(a)
            checks.append({"obs_shape": list(np.shape(o)), "obs_dtype": np.asarray(o).dtype.name,
                           "step_obs_shape": list(np.shape(o2))})
        reply["checks"] = checks
        return reply, []

    def cmd_get_attr(self, header, arrays):
        name = header["name"]
        indices = header.get("indices")
        indices = list(range(len(self.envs))) if indices is None else indices
        values = [_jsonable(getattr(self.envs[i].env, name)) for i in indices]
        return {"values": values}, []

    def cmd_crash(self, header, arrays):
        """Test hook: die abruptly, as a segfaulting native library would."""
        os._exit(int(header.get("code", 3)))

    def cmd_hang(self, header, arrays):
        """Test hook: stop answering, as a deadlocked env would."""
        import time
        time.sleep(float(header.get("seconds", 3600)))
        return {}, []

    def close_envs(self):
        for env in self.envs:
            env.close()
        self.envs = []

    def cmd_close(self, header, arrays):
        self.close_envs()
        return {"closed": True}, []


# ---------------------------------------------------------------------------------------------
# Shared-memory steps: the hot path without syscalls or serialization
# ---------------------------------------------------------------------------------------------

# int64 control words at the start of the region
REQUEST, REPLY, WORKER_ASLEEP, HOST_ASLEEP, REPLY_ON_SOCKET = range(5)
_CONTROL_BYTES = 64
# the machines whose memory model keeps two stores in order, as a reader of another process
# sees them (x86's TSO): the step data is written before the sequence number that publishes it
SHARED_MACHINES = ("x86_64", "AMD64", "i386", "i686")


def _aligned(nbytes):
    return (nbytes + 63) // 64 * 64


def _obs_row(space):
    """Shape and dtype of one env's observation as the worker sends it."""
    kind = space["type"]
    if kind == "box":
        return [int(d) for d in space["shape"]], np.dtype(space["dtype"]).str
    if kind == "discrete":
        return [], np.dtype(np.int64).str
    if kind == "multi_discrete":
        return [len(space["nvec"])], np.dtype(np.int64).str
    return [int(space["n"])], np.dtype(np.int8).str


def shared_layout(n, action_dtype, action_shape, obs_dtype, obs_shape):
    """Offsets of the actions, observations and status rows in the region, and its size."""
    act = n * int(np.prod(action_shape)) * np.dtype(action_dtype).itemsize
    obs = n * int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
    layout = {"n": n, "action_dtype": action_dtype, "action_shape": list(action_shape),
              "obs_dtype": obs_dtype, "obs_shape": list(obs_shape)}
    layout["actions_at"] = _CONTROL_BYTES
    layout["obs_at"] = layout["actions_at"] + _aligned(act)
    layout["status_at"] = layout["obs_at"] + _aligned(obs)
    layout["size"] = max(mmap.PAGESIZE, layout["status_at"] + _aligned(3 * n * 8))
    return layout


class SharedRegion(object):
    """Views of one step region: control words, actions, observations, status rows.

    Both sides map the same memfd. A step is published by writing the data first and the
    sequence number last (REQUEST by the host, REPLY by the worker); the reader spins on the
    number, then reads the data. A side about to sleep raises its ASLEEP flag, then rechecks
    the number; the other side publishes its number, then reads the flag and, if raised, sends
    a one-message wake-up on the socket. A full fence between each side's store and load
    (`fence`) keeps both from missing each other; a sleeper still rechecks now and then.
    """

    def __init__(self, buf, layout):
        self.buf = buf
        self.layout = layout
        n = layout["n"]
        self.control = np.frombuffer(buf, np.int64, 8, 0)
        act_shape = (n,) + tuple(layout["action_shape"])
        obs_shape = (n,) + tuple(layout["obs_shape"])
        self.actions = np.frombuffer(buf, layout["action_dtype"], int(np.prod(act_shape)),
                                     layout["actions_at"]).reshape(act_shape)
        self.obs = np.frombuffer(buf, layout["obs_dtype"], int(np.prod(obs_shape)),
                                 layout["obs_at"]).reshape(obs_shape)
        self.status = np.frombuffer(buf, np.float64, 3 * n, layout["status_at"]).reshape(3, n)
        self.seq = 0
        self._lock = threading.Lock()

    def fence(self):
        """A full memory barrier: taking a free lock is a locked (serializing) instruction."""
        self._lock.acquire()
        self._lock.release()

    def close(self):
        self.control = self.actions = self.obs = self.status = None
        try:
            self.buf.close()
        except Exception:
            pass  # a caller still holds a view: the mapping goes with the last reference


def receive_fd(sock, timeout=30.0):
    """Receive one file descriptor passed with SCM_RIGHTS (the host's memfd)."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        raise TimeoutError("no shared-memory descriptor within %g s" % timeout)
    size = socket.CMSG_SPACE(np.dtype(np.int32).itemsize)
    _msg, ancdata, _flags, _addr = sock.recvmsg(1, size)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            return int(np.frombuffer(data[:4], np.int32)[0])
    raise ConnectionError("the host's message carried no file descriptor")


class SpinGate(object):
    """Whether spinning is cheap now: only while the other runnable threads leave a CPU free.

    A spinning side on a loaded machine takes a CPU from the process it waits for (two
    trainings with their workers on two cores ran at half the speed of sleeping). The kernel's
    count of runnable threads (`/proc/loadavg`) is read at most every `period` seconds.
    """

    def __init__(self, period=0.005, loadavg="/proc/loadavg"):
        try:
            self.cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = os.cpu_count() or 1
        self.period = period
        self.loadavg = loadavg
        self.checked = -1.0
        self.ok = True

    def allows(self, now):
        if self.cpus < 2:
            return False  # on one CPU, spinning only delays the process waited for
        if now - self.checked < self.period:
            return self.ok
        self.checked = now
        try:
            with open(self.loadavg) as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return self.ok
        self.ok = running - 1 < self.cpus  # the others, without this thread, leave a CPU free
        return self.ok


class SharedServer(object):
    """The worker's half of shared-memory steps for an `EnvGroup` whose envs share spaces."""

    def __init__(self, region, spin):
        self.region = region
        self.spin = spin
        self.gate = SpinGate()

    @classmethod
    def attach(cls, group, header, channel, spin):
        """Answer `shared`: send the layout, receive the host's memfd, map it."""
        if not group.envs or not group.stacked:
            raise ValueError("shared-memory steps need envs that share their observation space")
        obs_shape, obs_dtype = _obs_row(group.spaces[0]["observation"])
        layout = shared_layout(len(group.envs), header["action_dtype"], header["action_shape"],
                               obs_dtype, obs_shape)
        channel.send({"ok": True, "layout": layout})
        fd = receive_fd(channel.sock)
        try:
            buf = mmap.mmap(fd, layout["size"])
        finally:
            os.close(fd)
        return cls(SharedRegion(buf, layout), spin)

    def wait(self, sock):
        """True when a step was published; False when the socket has a message (or closed).

        Spins for up to `self.spin` seconds while `SpinGate` sees a free CPU, then sleeps on
        the socket until a message or the host's wake-up.
        """
        control = self.region.control
        last = self.region.seq
        clock = time.perf_counter
        now = clock()
        stop = now + (self.spin if self.gate.allows(now) else 0.0)
        peek = socket.MSG_PEEK | socket.MSG_DONTWAIT
        while now < stop:
            # no syscall in the tight loop: their mitigations leave the interpreter cold
            for _ in range(256):
                if control[REQUEST] != last:
                    return True
            try:
                sock.recv(1, peek)
                return False  # a message, or b"" when the host closed the connection
            except BlockingIOError:
                pass
            now = clock()
        while True:
            control[WORKER_ASLEEP] = 1
            self.region.fence()
            if control[REQUEST] != last:
                control[WORKER_ASLEEP] = 0
                return True
            ready, _, _ = select.select([sock], [], [], 0.05)
            control[WORKER_ASLEEP] = 0
            if control[REQUEST] != last:
                return True
            if ready:
                return False

    def step(self, group, channel):
        """Step every env with the published actions.

        Infos, episode ends and errors follow on the socket, sent before the reply number is
        published, so the host finds them there when the number says so.
        """
        region = self.region
        control = region.control
        region.seq = int(control[REQUEST])
        try:
            reply, out = group.cmd_step(None, [region.actions.copy()])
            region.obs[...] = out[0]
            region.status[...] = out[1]
            reply.pop("stacked", None)
            on_socket = bool(reply)
            if on_socket:
                reply["ok"] = True
                channel.send(reply, out[2:])
        except Exception as exc:
            channel.send(error_reply(exc))
            on_socket = True
        control[REPLY_ON_SOCKET] = 1 if on_socket else 0
        control[REPLY] = region.seq
        region.fence()
        if not on_socket and control[HOST_ASLEEP]:
            channel.send({"wake": True})


def error_reply(exc):
    """The reply for a failed request: message, env index if known, and the traceback."""
    return {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc),
            "env_index": getattr(exc, "env_index", None),
            "traceback": traceback.format_exc()}


def serve(sock, spin=0.0002, shared_spin=0.002):
    """Answer requests until the host closes the connection or sends `close`.

    Steps arrive through shared memory once the host asked for it (`shared`); every other
    request, and `wake` (answered by nothing), comes over the socket.
    """
    group = EnvGroup()
    channel = Channel(sock, spin)
    shared = None
    while True:
        if shared is not None and not channel.buffered():
            if shared.wait(sock):
                shared.step(group, channel)
                continue
        try:
            header, arrays = channel.recv()
        except ConnectionError:
            break
        cmd = header.get("cmd")
        if cmd == "wake":
            continue
        try:
            if cmd in ("shared", "make") and shared is not None:
                shared.region.close()  # new envs or a new region: the old layout is void
                shared = None
            if cmd == "shared":
                shared = SharedServer.attach(group, header, channel, shared_spin)
                reply, out = {"shared": True}, []
            else:
                reply, out = group.handle(header, arrays)
            reply["ok"] = True
        except Exception as exc:
            reply, out = error_reply(exc), []
        channel.send(reply, out)
        if cmd == "close":
            break
    group.close_envs()


def _tighten_timer_slack():
    """Linux delays timed sleeps by up to 50 us by default; the worker's naps need precision."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in nanoseconds
    except Exception:
        pass


def main(argv=None):
    """Connect to the host's socket and serve until it closes."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--connect":
        sys.stderr.write("usage: worker.py --connect SOCKET_PATH\n")
        return 2
    warnings.simplefilter("ignore")
    _tighten_timer_slack()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(argv[1])
    spin = float(os.environ.get("LDM_WORKER_SPIN_US", "200")) * 1e-6
    shared_spin = float(os.environ.get("LDM_WORKER_SHARED_SPIN_US", "2000")) * 1e-6
    try:
        serve(sock, spin, shared_spin)
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
