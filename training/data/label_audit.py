"""The label audit of the real-recording corpus: does YAMNet, trained on AudioSet, hear what the rules say?

    hybridsep corpus audit --manifest DIR/manifest.jsonl [--out DIR/audit] [--speech N]

For each clip (every non-speech clip, and a fixed sample of N speech clips per split) YAMNet's scores, averaged
over the clip (training.data.weak_labels.clip_scores), give its top TOP_K AudioSet tags. A clip agrees with its
label when one of them is among the tags `real_rules.toml` lists for its class. A clip contradicts its label
strongly (it is flagged) when YAMNet is confident of another tag (>= FLAG_TOP_SCORE) and gives every tag of its
class less than FLAG_CLASS_SCORE. The report gives the per-class agreement and the flagged clips, to fix rules by.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from hybridsep_rt.atomic import atomic_write_text
from training.data.audio import AudioError, load_audio
from training.data.real_rules import Rules

# Not from a paper: YAMNet's scores are per-class sigmoids. Five tags cover a clip's class and its parents
# (AudioSet's ontology repeats a sound at several levels: "Animal", "Dog", "Bark").
TOP_K = 5
FLAG_TOP_SCORE = 0.3
FLAG_CLASS_SCORE = 0.02
SPEECH_SAMPLE = 200  # speech clips audited per split (of thousands; they are the best-labelled class)
REPORT_NAME = "label_audit.md"
DETAILS_NAME = "label_audit.json"


def audit_rows(rows: Sequence[dict], speech_sample: int = SPEECH_SAMPLE, seed: int = 0) -> list[dict]:
    """The rows to audit: every non-speech row and `speech_sample` speech rows per split, drawn with `seed`."""
    chosen = [row for row in rows if row["keywords"][0] != "Speech"]
    for split in sorted({row["split"] for row in rows}):
        speech = [row for row in rows if row["keywords"][0] == "Speech" and row["split"] == split]
        order = np.random.default_rng([seed, len(speech)]).permutation(len(speech))[:speech_sample]
        chosen += [speech[int(i)] for i in sorted(order)]
    return chosen


def judge(scores: np.ndarray, names: Sequence[str], accepted: Sequence[str]) -> dict:
    """One clip's verdict from YAMNet's (521,) scores and its class's accepted tags."""
    order = np.argsort(-scores)[:TOP_K]
    top = [(names[i], round(float(scores[i]), 3)) for i in order]
    index = {name: i for i, name in enumerate(names)}
    class_score = max(float(scores[index[name]]) for name in accepted)
    agrees = any(name in accepted for name, _ in top)
    flagged = not agrees and top[0][1] >= FLAG_TOP_SCORE and class_score < FLAG_CLASS_SCORE
    return {"top": top, "class_score": round(class_score, 4), "agrees": agrees, "flagged": flagged}


def audit(manifest: str | Path, out_dir: str | Path, rules: Rules | None = None,
          speech_sample: int = SPEECH_SAMPLE, progress: bool = True) -> dict:
    """Audit the manifest's labels with YAMNet; writes the report and the details to `out_dir`; returns the
    per-class summary {class: {"clips", "agree", "flagged"}}."""
    from training.data.weak_labels import clip_scores
    from training.models.yamnet import SAMPLE_RATE, YAMNet

    rules = rules or Rules()
    manifest, out_dir = Path(manifest), Path(out_dir)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = audit_rows(rows, speech_sample)
    yamnet = YAMNet(SAMPLE_RATE).eval()
    details = []
    for row in tqdm(chosen, desc="label audit", unit="clip", disable=not progress):
        cls = row["keywords"][0]
        try:
            wave = load_audio(manifest.parent / row["path"], SAMPLE_RATE)
        except AudioError as error:
            details.append({"path": row["path"], "class": cls, "split": row["split"], "error": str(error)})
            continue
        verdict = judge(clip_scores(yamnet, wave), yamnet.class_names, rules.classes[cls]["audioset"])
        details.append({"path": row["path"], "origin": row.get("origin"), "package": row.get("package"),
                        "class": cls, "split": row["split"], **verdict})
    summary: dict = {}
    for entry in details:
        if "error" in entry:
            continue
        item = summary.setdefault(entry["class"], {"clips": 0, "agree": 0, "flagged": 0})
        item["clips"] += 1
        item["agree"] += entry["agrees"]
        item["flagged"] += entry["flagged"]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / DETAILS_NAME, json.dumps({"summary": summary, "clips": details}, indent=1,
                                                         ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / REPORT_NAME, format_report(summary, details))
    return summary


def format_report(summary: dict, details: Sequence[dict]) -> str:
    """Markdown: the per-class agreement table, then the flagged clips."""
    lines = ["# Label audit (YAMNet)", "",
             f"A clip agrees when one of YAMNet's top {TOP_K} AudioSet tags is one of its class's tags "
             f"(real_rules.toml); it is flagged when YAMNet gives another tag >= {FLAG_TOP_SCORE} and every tag "
             f"of its class < {FLAG_CLASS_SCORE}. Speech: a sample of {SPEECH_SAMPLE} clips per split.", "",
             "| class | clips | agree | agreement | flagged |", "|---|---:|---:|---:|---:|"]
    for cls, item in sorted(summary.items(), key=lambda kv: -kv[1]["clips"]):
        lines.append(f"| {cls} | {item['clips']} | {item['agree']} | {100 * item['agree'] / item['clips']:.0f} % "
                     f"| {item['flagged']} |")
    total = sum(item["clips"] for item in summary.values())
    agree = sum(item["agree"] for item in summary.values())
    lines += ["", f"All audited clips: {total}, agreeing {agree} ({100 * agree / max(total, 1):.0f} %).", "",
              "## Flagged clips", "", "| class | split | file | YAMNet's top tags |", "|---|---|---|---|"]
    for entry in details:
        if entry.get("flagged"):
            tags = ", ".join(f"{name} {score:.2f}" for name, score in entry["top"][:3])
            lines.append(f"| {entry['class']} | {entry['split']} | {entry.get('origin') or entry['path']} | {tags} |")
    errors = [entry for entry in details if "error" in entry]
    if errors:
        lines += ["", "## Clips that could not be read", ""] + [f"- {e['path']}: {e['error']}" for e in errors]
    return "\n".join(lines) + "\n"
