"""How much of a 4-bit (and 2-bit) export's damage quantization-aware LoRA wins back, on the default task.

    python benchmarks/qat_recovery.py DIR [--targets q4_0 q5_0 q4_1 tq2_0] [--float RUN] [--held-out 100]
                                          [--rephrased-limit N] [--loftq] [--teacher] [--json FILE]

Every run is an ordinary ``kbit train`` run of the default task (SmolLM2-135M, 100 steps × batch 8) in
``DIR/<name>``, trained here when missing and reused when finished:
- ``qlora``: the float reference (its ``merged/``), or ``--float RUN`` (e.g. the README's default run);
- ``qat_<target>``: ``kbit train --method qat -o target=<target>``, one per target;
- ``qalora_<target>`` for the offset formats (q4_1, q5_1): ``kbit train --method qalora -o target=<target>``;
- with ``--loftq``: ``qlora_loftq`` (``-o init=loftq``), compared with ``qlora`` at step 0 and at the end;
- with ``--teacher``: ``qat_<target>_teacher``, the same qat run distilled from the float run (``--teacher``).

The round-to-nearest (RTN) file of each target is ``kbit export <float run> --type <target>``. Every
file and the float ``merged/`` are then scored by ``kbit eval`` — GGUF files in llama.cpp where it is
installed — on the default held-out items (``arith``) and on the same sums asked in wordings training
never used (``arith-rephrased``: the same sums, each asked in further wordings when ``--rephrased-limit``
exceeds the held-out count). ``--held-out N`` trains every run with N held-out sums and scores all N: the
exact-match intervals narrow with N (printed beside each figure). Printed per target: file size, held-out loss, exact match on both,
and the share of the RTN file's loss of exact match that a file recovers,
``(EM_file - EM_RTN) / (EM_float - EM_RTN)``; the rephrased score is also given as a share of the
float model's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

OFFSET_FORMATS = ("q4_1", "q5_1")


def _kbit(*args: str) -> None:
    print("$ kbit " + " ".join(args), flush=True)
    result = subprocess.run([sys.executable, "-m", "kbit", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"kbit {args[0]} failed:\n{result.stderr[-3000:]}")


def _record(run: Path) -> dict[str, Any]:
    return json.loads((run / "kbit.json").read_text())


def _train(run: Path, held_out: int, *options: str) -> Path:
    """``run``, trained with ``held_out`` held-out sums unless it holds a merged model already (a run that
    failed only its deploy check is kept: its status is printed with the table)."""
    if (run / "kbit.json").exists() and (_record(run).get("status") == "finished" or (run / "merged").is_dir()):
        return _same_split(run, held_out)
    _kbit("train", "--output", str(run), "--overwrite", "--held-out", str(held_out), *options)
    return run


def _same_split(run: Path, held_out: int) -> Path:
    """``run``, unless it was trained on another split than ``held_out`` held-out sums (exit)."""
    trained = _record(run).get("config", {}).get("held_out")
    if int(trained or 100) != held_out:
        sys.exit(f"{run} was trained with {trained or 100} held-out sums, not {held_out}; pass --held-out {trained or 100}")
    return run


def _file_of(run: Path, file_type: str) -> Path:
    """The run's GGUF of ``file_type``: its own deploy file, else written now by ``kbit export`` (for the float
    run: the round-to-nearest file) with the gate open, since this program reports what each file scores."""
    for entry in _record(run).get("exports", []):
        if entry.get("type") == file_type and (run / entry["file"]).exists():
            return run / entry["file"]
    _kbit("export", str(run), "--type", file_type, "--max-kl", "1000", "--max-em-drop", "1")
    return _file_of(run, file_type)


def _scores(models: list[Path], dataset: str, out: Path, held_out: int, limit: int) -> dict[str, dict[str, Any]]:
    """``kbit eval`` of every model on ``dataset``, one report per model under ``out`` (kept: a second
    call reuses it): {resolved path: report row}."""
    scores = {}
    for model in models:
        resolved = model.resolve()
        folder = out / "-".join(resolved.parts[-3:]).replace(".", "_")
        if not (folder / "report.json").exists():
            _kbit("eval", "--dataset", dataset, "--held-out", str(held_out), "--limit", str(limit), "--out", str(folder),
                  "--overwrite", "--model", str(model))
        (row,) = [row for row in json.loads((folder / "report.json").read_text())["rows"] if row.get("path")]
        scores[str(resolved)] = row
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--targets", nargs="+", default=["q4_0", "q5_0", "q4_1", "tq2_0"])
    parser.add_argument("--float", dest="float_run", type=Path, default=None)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--rephrased-limit", type=int, default=None)
    parser.add_argument("--loftq", action="store_true")
    parser.add_argument("--teacher", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    held_out = args.held_out
    float_run = _same_split(args.float_run, held_out) if args.float_run else _train(args.dir / "qlora", held_out, "--method", "qlora")
    files: dict[str, dict[str, Path]] = {}
    for target in args.targets:
        qat = _train(args.dir / f"qat_{target}", held_out, "--method", "qat", "-o", f"target={target}")
        files[target] = {"RTN of qlora": _file_of(float_run, target), "qat": _file_of(qat, target)}
        if args.teacher:
            taught = _train(args.dir / f"qat_{target}_teacher", held_out, "--method", "qat", "-o", f"target={target}",
                            "--teacher", str(float_run))
            files[target]["qat --teacher (the float run)"] = _file_of(taught, target)
        if target in OFFSET_FORMATS:
            qalora = _train(args.dir / f"qalora_{target}", held_out, "--method", "qalora", "-o", f"target={target}")
            files[target]["qalora"] = _file_of(qalora, target)
    models = [float_run / "merged", *(path for by_kind in files.values() for path in by_kind.values())]
    if args.loftq:
        loftq = _train(args.dir / "qlora_loftq", held_out, "--method", "qlora", "-o", "init=loftq")
        models.append(loftq / "merged")
    limits = {"arith": held_out, "arith-rephrased": args.rephrased_limit or held_out}
    scores = {dataset: _scores(models, dataset, args.dir / f"eval-{dataset}-{limit}", held_out, limit)
              for dataset, limit in limits.items()}

    def figures(path: Path) -> dict[str, Any]:
        key = str(path.resolve())
        plain, rephrased = scores["arith"][key], scores["arith-rephrased"][key]
        size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return {"file": str(path), "mib": size / 2**20, "loss": plain["loss"], "em": plain["exact_match"],
                "em_ci95": plain.get("exact_match_ci95"), "em_rephrased": rephrased["exact_match"],
                "em_rephrased_ci95": rephrased.get("exact_match_ci95"), "loss_rephrased": rephrased["loss"],
                "answer_top1": plain.get("answer_top1"), "runtime": plain.get("runtime", "transformers")}

    def em(value: float, interval: list[float] | None) -> str:
        return f"{100 * value:.1f}%" + (f" ({100 * interval[0]:.0f}–{100 * interval[1]:.0f})" if interval else "")

    reference = figures(float_run / "merged")
    table: dict[str, Any] = {"float": reference, "targets": {}}
    print(f"\n{held_out} held-out sums, {limits['arith-rephrased']} rephrased questions; exact match with its 95% interval")
    print(f"float merged/ ({float_run}): exact match {em(reference['em'], reference['em_ci95'])}, rephrased "
          f"{em(reference['em_rephrased'], reference['em_rephrased_ci95'])} (loss {reference['loss_rephrased']:.3f}), "
          f"loss {reference['loss']:.4f}, {reference['mib']:.1f} MiB\n")
    print("| target | file | MiB | held-out loss | exact match | recovered | top-1 vs own model | rephrased | rephrased loss "
          "| rephrased ÷ float |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in sorted(args.dir.glob("q*_*")):
        if (run / "kbit.json").exists() and _record(run).get("status") != "finished":
            print(f"note: run {run.name} is '{_record(run).get('status')}': {_record(run).get('error')}")
    for target, by_kind in files.items():
        rows = {kind: figures(path) for kind, path in by_kind.items()}
        rtn = rows["RTN of qlora"]["em"]
        for kind, row in rows.items():
            lost = reference["em"] - rtn
            row["recovered"] = None if kind == "RTN of qlora" or lost <= 0 else (row["em"] - rtn) / lost
            row["rephrased_share"] = row["em_rephrased"] / reference["em_rephrased"] if reference["em_rephrased"] else None
            recovered = "—" if row["recovered"] is None else f"{100 * row['recovered']:.0f}%"
            share = "—" if row["rephrased_share"] is None else f"{100 * row['rephrased_share']:.0f}%"
            top1 = "—" if row["answer_top1"] is None else f"{100 * row['answer_top1']:.1f}%"
            print(f"| {target} | {kind} | {row['mib']:.1f} | {row['loss']:.4f} | {em(row['em'], row['em_ci95'])} | {recovered} | "
                  f"{top1} | {em(row['em_rephrased'], row['em_rephrased_ci95'])} | {row['loss_rephrased']:.3f} | {share} |")
        table["targets"][target] = rows
    if args.loftq:
        plain_run, loftq_run = _record(float_run), _record(args.dir / "qlora_loftq")
        table["loftq"] = {
            "step1_loss": {"default": plain_run["loss_history"][0]["loss"], "loftq": loftq_run["loss_history"][0]["loss"]},
            "weight_error": loftq_run["train"].get("loftq"),
            "default": reference, "loftq": figures(args.dir / "qlora_loftq" / "merged"),
        }
        entry = table["loftq"]
        print(f"\nLoftQ (qlora): step-1 loss {entry['step1_loss']['default']:.4f} → {entry['step1_loss']['loftq']:.4f}; "
              f"relative weight error {entry['weight_error']}; exact match {100 * reference['em']:.0f}% → "
              f"{100 * entry['loftq']['em']:.0f}%, rephrased {100 * reference['em_rephrased']:.0f}% → "
              f"{100 * entry['loftq']['em_rephrased']:.0f}%")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
