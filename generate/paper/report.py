"""Run every section into a staging folder, write report.md and config.json beside the
figures, and swap the folder into place; reuse a complete result of the same config."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from unsuperpose.data import files
from unsuperpose.data.environment import environment
from unsuperpose.data.staging import StagingDir, check_replaceable, recover
from unsuperpose.generate.paper import computation, geometry, intro, phase, privileged, sparsity
from unsuperpose.generate.paper.common import Echo, Section
from unsuperpose.generate.paper.config import PaperConfig

SECTIONS = (intro, sparsity, phase, geometry, privileged, computation)
PAPER = ("Elhage et al. (2022), Toy Models of Superposition, "
         "https://transformer-circuits.pub/2022/toy_model/index.html")


def cached(out: Path, config: PaperConfig) -> dict | None:
    """The saved config.json when `out` holds a complete result of this resolved config."""
    path = out / files.CONFIG_FILE
    if not path.is_file():
        return None
    try:
        saved = files.read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("config_sha256") != files.config_sha256(config.to_dict()):
        return None
    if not all((out / name).is_file() for name in saved.get("files", [])):
        return None
    return saved


def report_text(config: PaperConfig, sections: list[Section], env: dict, seconds: float) -> str:
    lines = ["# Toy Models of Superposition, reproduced", "",
             f"The paper: {PAPER}. Every figure below was trained by `unsuperpose paper` "
             f"(seed {config.seed}, device {config.device}, {seconds:.0f} s; unsuperpose "
             f"{env['unsuperpose']}, commit {env['git_commit'] or 'none'}"
             f"{' (dirty)' if env['git_dirty'] else ''}, torch {env['torch']}). The resolved "
             f"config is in config.json; each figure's data is in the .safetensors and .csv "
             f"files of the same name.", ""]
    checks = [c for s in sections for c in s.checks if c.passed is not None]
    lines += [f"**{sum(c.passed for c in checks)} of {len(checks)} checks pass.**", ""]
    for number, section in enumerate(sections, 1):
        lines += [f"## {number}. {section.title}", "", f"![{section.key}]({section.figure})", "",
                  f"Setting: {section.setting}.", ""]
        lines += [f"- {check.line()}" for check in section.checks]
        lines += ["", "Data: " + ", ".join(f"[{d}]({d})" for d in section.data), ""]
    return "\n".join(lines)


def run_paper(config: PaperConfig, out: str | Path, echo: Echo = lambda s: None,
              force: bool = False) -> tuple[Path, bool]:
    """Write the reproduction to `out`; returns (out, whether it was reused from cache)."""
    out = Path(out)
    config = config.resolved()
    check_replaceable(out, "paper")  # the current folder, a file: refused before any work
    for line in recover(out):
        echo(f"  recovered: {line}")
    check_replaceable(out, "paper")  # a folder holding more than a previous result: refused
    if not force and cached(out, config) is not None:
        echo(f"paper: {out} already holds this config's result (config.json); reusing it "
             f"(--force retrains)")
        return out, True
    started = time.time()
    with StagingDir(out) as stage:
        sections = []
        for module in SECTIONS:
            t = time.time()
            echo(f"paper: {module.NAME}")
            sections.append(module.run(config, stage, echo))
            echo(f"paper: {module.NAME} done in {time.time() - t:.0f} s")
        seconds = time.time() - started
        env = environment(config.device)
        (stage / files.REPORT_FILE).write_text(report_text(config, sections, env, seconds))
        written = sorted([files.REPORT_FILE] + [s.figure for s in sections]
                         + [d for s in sections for d in s.data])
        files.atomic_write_json(stage / files.CONFIG_FILE, {
            "stage": "paper",
            "config": config.to_dict(),
            "config_sha256": files.config_sha256(config.to_dict()),
            "environment": env,
            "torch_threads": torch.get_num_threads(),
            "seconds": round(seconds, 1),
            "files": written,
            "checks": {s.key: [c.to_dict() for c in s.checks] for s in sections},
        })
    return out, False
