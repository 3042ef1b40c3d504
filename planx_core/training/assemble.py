"""`python -m planx_core assemble`: a bundle folder from the exports of the training stages.

This project's own glue. The stages export their runtime files into their run folders
(`train.py`); a bundle (`bundle.py`) is those files side by side plus bundle.json. This command
copies them, with the DiT before end-to-end training under `no_e2e/` (the evaluation's
ablation row), writes bundle.json with the given sampling defaults, then loads the result to
check that the parts fit together. It refuses a planner run and a DiT run that used different
TA-Tok codebooks (their digests are compared), since the plans would mean other things.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ..files.safetensors import CheckpointError
from ..pipelines.bundle import (
    EMBEDDED,
    BundleSpec,
    PlanningDefaults,
    SamplingDefaults,
    load_bundle,
    write_spec,
)
from ..semanticgen.generator import check_fits
from ..semanticgen.model import FILES as SEMANTICGEN_FILES
from ..semanticgen.model import SemanticGen
from ..tatok.files import load_tatok
from ..wan.dit_files import load_dit, load_dit_file
from .semanticgen_semantic import read_semantic_options


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path}: missing ({what}); finish that training stage or pass the right run folder")
    return path


def _dit_tatok_digest(run: Path) -> str | None:
    """The TA-Tok digest a dit / e2e run recorded in its checkpoint fingerprint (None if it has no checkpoint)."""
    state = run / "checkpoint" / "state.json"
    return json.loads(state.read_text()).get("fingerprint", {}).get("tatok") if state.is_file() else None


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)


def assemble(
    planner_run: Path,
    vae_run: Path,
    dit_run: Path,
    out: Path,
    *,
    no_e2e_run: Path | None = None,
    sampling: SamplingDefaults = SamplingDefaults(),
    planning: PlanningDefaults = PlanningDefaults(),
    notes: str = "",
) -> Path:
    """Copy the stages' exports into `out` and write bundle.json; returns `out` (checked by loading it)."""
    tatok_file = _need(planner_run / "ta_tok.safetensors", "the TA-Tok exported with the planner")
    tatok = load_tatok(tatok_file)
    trained_with = _dit_tatok_digest(dit_run)
    if trained_with is not None and trained_with != tatok.digest():
        raise CheckpointError(
            f"{planner_run} and {dit_run} used different TA-Tok codebooks ({tatok.digest()[:12]} vs "
            f"{trained_with[:12]}); train the DiT with --tatok pointing at the planner's TA-Tok"
        )
    out.mkdir(parents=True, exist_ok=True)
    parts = {
        "planner": planner_run / "planner",
        "ta_tok.safetensors": tatok_file,
        "vae.safetensors": vae_run / "vae.safetensors",
        "dit.safetensors": dit_run / "dit.safetensors",
        "branch.safetensors": dit_run / "branch.safetensors",
        "text_encoder": dit_run / "text_encoder",
    }
    for name, src in parts.items():
        _copy(_need(src, name), out / name)
    if no_e2e_run is not None:
        (out / "no_e2e").mkdir(exist_ok=True)
        for name in ("dit.safetensors", "branch.safetensors"):
            _copy(_need(no_e2e_run / name, name), out / "no_e2e" / name)
    dit = load_dit(out / "dit.safetensors")
    write_spec(BundleSpec(dit=dit.config, sampling=sampling, planning=planning, notes=notes), out)
    load_bundle(out)
    return out


# ----------------------------------------------------------------------------- the model card


def run_history(run: Path) -> dict:
    """From a run's log.jsonl: its segments (first step, command line when logged), final step,
    compute seconds (sum of steps x s/step) and the last evaluation."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    segments = [(r["step"], r.get("argv"), r.get("device"), r.get("world")) for r in records if r["event"] == "start"]
    seconds, last = 0.0, 0
    for r in records:
        if r["event"] == "start":
            last = r["step"]
        elif r["event"] == "step":
            seconds += (r["step"] - last) * r["s_per_step"]
            last = r["step"]
    bookkeeping = {"event", "time", "step", "stopped", "param_sha"}
    evals = [r for r in records if r["event"] in ("eval", "end") and set(r) - bookkeeping]
    return {"segments": segments, "steps": last, "seconds": seconds, "eval": evals[-1] if evals else {}}


def model_card(runs: dict[str, Path], intro: str = "", report: str = "") -> str:
    """MODEL_CARD.md: `intro`, then per training run its commands (as logged), steps and compute time,
    then the evaluation `report`."""
    lines = [intro.rstrip(), "", "## Training runs (from each run's log.jsonl)", ""]
    for name, run in runs.items():
        h = run_history(run)
        lines.append(f"### {name}: `{run}`, {h['steps']} steps, {h['seconds'] / 3600:.2f} h of compute")
        for step, argv, device, world in h["segments"]:
            command = "python -m planx_core train " + " ".join(argv) if argv else "(command not logged)"
            lines.append(f"- from step {step} on {device} x{world}: `{command}`")
        metrics = {k: v for k, v in h["eval"].items() if k not in ("event", "time", "param_sha", "stopped")}
        lines += [f"- last evaluation: {json.dumps(metrics)}", ""]
    if report:
        lines += ["## Evaluation", "", report.strip().replace("# Plan-X evaluation", "### Plan-X evaluation", 1), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m planx_core assemble", description=__doc__.split("\n")[0])
    p.add_argument("--planner", required=True, help="`--stage planner` run folder (planner/ and ta_tok.safetensors)")
    p.add_argument("--vae", required=True, help="`--stage vae` run folder")
    p.add_argument("--dit", required=True, help="`--stage e2e` (or dit) run folder: DiT, branch, text encoder")
    p.add_argument("--no-e2e", help="`--stage dit` run folder before end-to-end training (the ablation)")
    p.add_argument("--out", default=str(EMBEDDED), help="bundle folder to write (default: the embedded model)")
    p.add_argument("--steps", type=int, default=SamplingDefaults.steps)
    p.add_argument("--solver", default=SamplingDefaults.solver)
    p.add_argument("--shift", type=float, default=SamplingDefaults.shift)
    p.add_argument("--text-scale", type=float, default=SamplingDefaults.text_scale)
    p.add_argument("--plan-scale", type=float, default=SamplingDefaults.plan_scale)
    p.add_argument("--temperature", type=float, default=PlanningDefaults.temperature, help="planner sampling")
    p.add_argument(
        "--t2v-temperature", type=float, help="planner sampling without a first frame (default: --temperature)"
    )
    p.add_argument(
        "--persistence",
        type=float,
        default=PlanningDefaults.persistence,
        help="planner sampling: logit bonus for a plan cell keeping its code of the keyframe before (0: off)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=PlanningDefaults.candidates,
        help="planner sampling: plans drawn per request, the planner's likeliest kept (1: one draw)",
    )
    p.add_argument("--notes", default="")
    p.add_argument("--card-intro", help="Markdown file: the hand-written top of MODEL_CARD.md")
    p.add_argument("--report", help="report.md of `python -m planx_core.eval` to put in MODEL_CARD.md")
    p.add_argument("--runs", nargs="*", default=[], help="more run folders to list in the card (e.g. runs/tatok)")
    a = p.parse_args(argv)
    sampling = SamplingDefaults(
        steps=a.steps, shift=a.shift, solver=a.solver, text_scale=a.text_scale, plan_scale=a.plan_scale
    )
    try:
        out = assemble(
            Path(a.planner),
            Path(a.vae),
            Path(a.dit),
            Path(a.out),
            no_e2e_run=Path(a.no_e2e) if a.no_e2e else None,
            sampling=sampling,
            planning=PlanningDefaults(
                temperature=a.temperature,
                t2v_temperature=a.t2v_temperature,
                persistence=a.persistence,
                candidates=a.candidates,
            ),
            notes=a.notes,
        )
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if a.card_intro:
        runs = {Path(r).name: Path(r) for r in [*a.runs, a.vae, a.planner, a.no_e2e, a.dit] if r}
        intro = Path(a.card_intro).read_text(encoding="utf-8")
        report = Path(a.report).read_text(encoding="utf-8") if a.report else ""
        (out / "MODEL_CARD.md").write_text(model_card(runs, intro, report), encoding="utf-8")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote bundle {out} ({size / 2**20:.1f} MiB)")
    return 0


def assemble_semanticgen(latent_run, semantic_run, out, *, with_shared: bool = False) -> Path:
    """One SemanticGen folder from a `semgen-latent` run and a `semgen-semantic` run's exports."""
    model = SemanticGen.load(latent_run, need_semantic=False)
    semantic = load_dit_file(Path(semantic_run) / SEMANTICGEN_FILES["semantic_dit"])
    check_fits(semantic, (model.spec.sem_dim,))
    model = model.with_spec(**read_semantic_options(semantic_run))
    return model.with_semantic(semantic).save(out, with_shared=with_shared)


if __name__ == "__main__":
    sys.exit(main())
