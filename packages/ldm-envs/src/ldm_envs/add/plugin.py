"""Writing what `ldm-envs add` found: the ranking subset, the manifest, the README, `uv add`.

A re-run keeps hand edits: `ldm-add.json` beside the package's `pyproject.toml` records the
manifest as `add` generated it, and a field whose current value differs from that record was
edited by hand and is kept (a three-way merge, field by field, envs matched by id).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ldm_envs.add.errors import AddError
from ldm_envs.add.trial import EnvTrial
from ldm_envs.atomic import atomic_write_text
from ldm_envs.errors import ManifestError
from ldm_envs.interpreters import uv_executable
from ldm_envs.manifest import (
    RANKING_SUBSET_SIZE,
    EnvLibrarySpec,
    _plain,
    parse_manifest,
    read_manifest,
    write_manifest,
)
from ldm_envs.plugins import DISTRIBUTION_PREFIX
from ldm_envs.scaffold import find_workspace_root, module_name

RECORD = "ldm-add.json"
README_BEGIN = "<!-- ldm-envs add: begin (rewritten by every `ldm-envs add`) -->"
README_END = "<!-- ldm-envs add: end -->"


def _describe(space: object) -> str:
    return space.describe() if space is not None else "?"  # type: ignore[attr-defined]


def choose_ranking_subset(trials: list[EnvTrial], keep: Sequence[str] = ()) -> list[str]:
    """Five passing envs, diverse and fast.

    Fastest first within each of three passes: one env per observation space (kind and
    shape), then one per new (observation, action) pair, then the fastest of the rest.
    Ranking trains every candidate on these, so speed pays many times over.

    `keep` (the subset of the plugin being updated) stays, minus envs that fail now: random
    steps/s vary 3-4x between runs on a shared machine, and a reshuffled subset would
    make the rankings already run on the old one stale for no change in the library.
    """
    fastest = sorted((t for t in trials if t.ok), key=lambda t: -t.steps_per_second)
    passing = {t.env_id for t in fastest}
    subset = [e for e in dict.fromkeys(keep) if e in passing][:RANKING_SUBSET_SIZE]
    for key in (
        lambda t: _describe(t.observation),
        lambda t: f"{_describe(t.observation)} -> {_describe(t.action)}",
        lambda t: t.env_id,
    ):
        seen = {key(t) for t in fastest if t.env_id in subset}
        for t in fastest:
            if len(subset) < RANKING_SUBSET_SIZE and t.env_id not in subset and key(t) not in seen:
                subset.append(t.env_id)
                seen.add(key(t))
    return subset


def _normal(spec: EnvLibrarySpec) -> dict[str, Any]:
    """The manifest as the plain data `write_manifest` writes (the merge compares these)."""
    return json.loads(json.dumps(_plain(spec.model_dump(mode="python")), default=str))


def _merge(new: Any, old: Any, cur: Any) -> Any:
    """Three-way merge: what `add` generates now, generated last time, and the file today."""
    if cur == old:
        return new
    if not (isinstance(new, dict) and isinstance(old, dict) and isinstance(cur, dict)):
        return cur  # edited by hand since the last `add`
    out = {}
    for key in [*new, *(k for k in cur if k not in new)]:
        if key in new and key in cur:
            out[key] = _merge(new[key], old.get(key), cur[key]) if key in old else cur[key]
        elif key in new and key not in old:
            out[key] = new[key]  # a field `add` generates for the first time
        elif key in cur and key not in new and (key not in old or cur[key] != old[key]):
            out[key] = cur[key]  # added or edited by hand
    return out


def _by_id(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {**data, "envs": {e["id"]: e for e in data.get("envs", [])}}


#: Without a record of the last run: the fields `add` does not derive from the library, kept
#: from the file as they are.
_KEPT = ("description", "version", "requires_core")
_KEPT_ENVIRONMENT = (
    "build_constraints",
    "apt_packages",
    "env_vars",
    "base_image",
    "local_packages",
)
_KEPT_ENV = ("gym_id", "kwargs", "wrappers", "seed_kwarg", "remake_on_reset")


def _unrecorded_base(new: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """What to merge against when no record exists: `cur` where `add` derives nothing."""
    old = dict(new)
    old["environment"] = dict(new["environment"])
    old["envs"] = dict(new["envs"])
    for key in _KEPT:
        old[key] = None  # differs from the file: the file's value is kept
    for key in _KEPT_ENVIRONMENT:
        old["environment"][key] = None
    for env_id, env in cur["envs"].items():
        base = dict(new["envs"].get(env_id, env))
        for key in _KEPT_ENV:
            base[key] = None
        old["envs"][env_id] = base
    return old


def merge_manifest(
    generated: EnvLibrarySpec, previous: dict[str, Any] | None, current: EnvLibrarySpec | None
) -> EnvLibrarySpec:
    """The manifest to write: `generated`, with the hand edits of `current` kept.

    Without a record of the last run (`previous`), the fields `add` does not derive from the
    library (description, build details, each env's kwargs and wrappers) are kept from
    `current`; envs only `current` declares are kept too.
    """
    if current is None:
        return generated
    new = _by_id(_normal(generated))
    cur = _by_id(_normal(current))
    assert new is not None and cur is not None
    old = _by_id(previous) if previous is not None else _unrecorded_base(new, cur)
    merged = _merge(new, old, cur)
    # envs: the generated order, then those added by hand; none both declared and excluded
    envs = merged["envs"]
    order = list(new["envs"]) + [e for e in envs if e not in new["envs"]]
    merged["envs"] = [envs[e] for e in order if e in envs]
    declared = {e["id"] for e in merged["envs"]}
    merged["excluded"] = {k: v for k, v in merged.get("excluded", {}).items() if k not in declared}
    if not set(merged.get("ranking_subset") or []) <= declared:
        merged["ranking_subset"] = [e for e in generated.ranking_subset if e in declared]
    try:
        return parse_manifest(merged, generated.name)
    except ManifestError as exc:
        raise AddError(
            f"the manifest merged with your edits does not validate (nothing was written):\n{exc}"
        ) from None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def readme_section(
    spec: EnvLibrarySpec, trials: list[EnvTrial], seconds: float, command: str
) -> str:
    """The README part `add` owns: how it was made, envs, speed, exclusions, widened bounds."""
    ok = {t.env_id: t for t in trials if t.ok}
    lines = [
        README_BEGIN,
        "## Made by `ldm-envs add`",
        "",
        f"`{command}` took {seconds:.0f} s (resolve, build, probe, random steps, write).",
        "",
        "Pins: "
        + ", ".join(f"`{r}`" for r in spec.environment.requirements)
        + f" (Python {spec.environment.python}, api {spec.environment.api.value}); the venv's "
        "full `ldm-freeze.txt` lists the rest.",
        "",
        f"### Envs ({len(spec.envs)} declared, {len(spec.excluded)} excluded)",
        "",
        "| env | observation | action | random steps/s | ranking |",
        "| --- | --- | --- | --- | --- |",
    ]
    for env in spec.envs:
        t = ok.get(env.id)
        lines.append(
            f"| {env.id} | {env.observation_space.describe() if env.observation_space else '?'} "
            f"| {env.action_space.describe() if env.action_space else '?'} "
            f"| {_fmt(t.steps_per_second) if t else '-'} "
            f"| {'yes' if env.id in spec.ranking_envs else ''} |"
        )
    if spec.excluded:
        lines += ["", "### Excluded", "", "| env | cause |", "| --- | --- |"]
        lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in spec.excluded.items()]
    widened = [t for t in trials if t.ok and t.widened and t.env_id in spec.env_ids]
    if widened:
        lines += [
            "",
            "### Observation bounds widened",
            "",
            "Random steps left the library's declared bounds on these dims, so the manifest's "
            "`observation_bounds` opens the exceeded side (both sides of a symmetric bound; "
            "values are not clipped). A dim seen in another env of the same module and "
            "observation layout is widened here too:",
            "",
            "| env | dim | declared | seen min | seen max | seen in |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for t in widened:
            lines += [
                f"| {t.env_id} | {w.dim} | [{_fmt(w.low)}, {_fmt(w.high)}] | {_fmt(w.seen_min)} "
                f"| {_fmt(w.seen_max)} | {w.seen_in or 'this env'} |"
                for w in t.widened
            ]
    lines.append(README_END)
    return "\n".join(lines) + "\n"


def write_readme(path: Path, section: str) -> None:
    """Put `section` in the README, replacing the one a previous `add` wrote (the rest stays)."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        # a fresh scaffold's "What to edit next" is done by `add`: the section replaces it
        text = re.sub(r"## What to edit next\n.*?(?=^## )", "", text, flags=re.S | re.M)
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)


def read_record(root: Path) -> dict[str, Any] | None:
    """The manifest as the last `add` generated it, if recorded."""
    try:
        return json.loads((root / RECORD).read_text())["generated"]
    except (OSError, ValueError, KeyError):
        return None


def write_plugin_files(
    root: Path, spec: EnvLibrarySpec, generated: EnvLibrarySpec, readme: str, options: dict
) -> Path:
    """Write the manifest, the README section and the record; return the manifest path."""
    manifest = root / "src" / module_name(spec.name) / "manifest.yaml"
    write_manifest(spec, manifest)
    read_manifest(manifest, spec.name)  # the written file reads back
    write_readme(root / "README.md", readme)
    record = {"options": options, "generated": _normal(generated)}
    atomic_write_text(root / RECORD, json.dumps(record, indent=2) + "\n")
    return manifest


def registered(workspace: Path, dist: str) -> bool:
    """Whether the workspace's root `pyproject.toml` already depends on `dist`."""
    text = (workspace / "pyproject.toml").read_text()
    return re.search(rf"^\s*[\"']{re.escape(dist)}[\"'<>=~!;\[ ,]", text, re.M) is not None


def uv_add(workspace: Path, name: str) -> str:
    """`uv add ldm-envlib-NAME` in the workspace, undoing its edits when it fails.

    Raises:
        AddError: with uv's output.
    """
    dist = DISTRIBUTION_PREFIX + name
    saved = {
        p: p.read_bytes()
        for p in (workspace / "pyproject.toml", workspace / "uv.lock")
        if p.exists()
    }
    proc = subprocess.run(
        [uv_executable(), "add", dist],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        for path, data in saved.items():
            path.write_bytes(data)
        raise AddError(f"`uv add {dist}` failed in {workspace}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def workspace_of(dest_root: Path) -> Path | None:
    """The uv workspace the plugins folder lies in, if any."""
    return find_workspace_root(Path(dest_root).resolve())


def remove_fresh(root: Path, existed: bool) -> None:
    """Undo a plugin folder this run created (a failed registration leaves nothing)."""
    if not existed:
        shutil.rmtree(root, ignore_errors=True)
