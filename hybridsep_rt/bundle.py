"""The model bundle: a folder of ONNX graphs, a tokenizer and a manifest that describes and checks them.

Layout (``hybridsep export`` writes it, :meth:`Bundle.load` reads and validates it)::

    bundle/
      manifest.json        format version, sizes, graphs (files, sha256, inputs/outputs, parity), provenance
      text_encoder.onnx    (input_ids, attention_mask) -> text_embedding
      aet.onnx             (mixture, text_embedding) -> target_embedding     absent for a one-stage model
      asm.onnx             (mixture, target_embedding) -> separated
      audio_encoder.onnx   (wave) -> audio_embedding                         query by example, CLAPScore
      tagger.onnx          (wave) -> class_scores (batch, frames, classes)   live tags (YAMNet); optional
      *.fp16.onnx          optional fp16 variants of the graphs (same inputs and outputs)
      *.int8.onnx          int8-weight variants (float32 arithmetic); text_encoder.int8.onnx by default
      tokenizer.json       a `tokenizers` tokenizer of the text encoder

Every graph has an fp32 or an int8 variant. The fp32 set, what the runtime uses unless asked for fp16, takes
a graph's int8 variant where the graph has no fp32 one: the text encoder of a default export.

manifest.json::

    {"format": "hybridsep-bundle", "format_version": 1,
     "sample_rate": 44100, "window_samples": 441000, "embedding_dim": 256, "max_text_tokens": 64,
     "one_stage": false,
     "tokenizer": {"file": "tokenizer.json", "sha256": "..."},
     "graphs": {"asm": {"inputs": [{"name": "mixture", "shape": ["batch", 441000], "dtype": "float32"}, ...],
                        "outputs": [...],
                        "variants": {"fp32": {"file": "asm.onnx", "sha256": "...", "parity": {...}},
                                     "fp16": {...}}},
                "text_encoder": {..., "variants": {"int8": {"file": "text_encoder.int8.onnx", ...,
                                                            "quantization": {...}}}},
                ...},
     "tagger": {"classes": ["Speech", ...], "first_frame_seconds": 0.3225, "frame_seconds": 0.32},
     "provenance": {"config": {...}, "git_commit": "...", "evaluation": {...}, "created": "...", ...}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "TOKENIZER_FILE",
    "TEXT_ENCODER",
    "AET",
    "ASM",
    "AUDIO_ENCODER",
    "TAGGER",
    "GRAPH_IO",
    "PRECISIONS",
    "BundleError",
    "TensorSpec",
    "GraphVariant",
    "GraphInfo",
    "Bundle",
    "graph_file_name",
    "file_precision",
    "session_io",
    "sha256_file",
]

FORMAT = "hybridsep-bundle"
FORMAT_VERSION = 1  # bump when the manifest or a graph's inputs/outputs change incompatibly
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"

TEXT_ENCODER = "text_encoder"
AET = "aet"
ASM = "asm"
AUDIO_ENCODER = "audio_encoder"
TAGGER = "tagger"  # optional: a bundle without it separates but cannot tag

# The input and output names of each graph, in order: the contract between the exporter and the runtime.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (("input_ids", "attention_mask"), ("text_embedding",)),
    AET: (("mixture", "text_embedding"), ("target_embedding",)),
    ASM: (("mixture", "target_embedding"), ("separated",)),
    AUDIO_ENCODER: (("wave",), ("audio_embedding",)),
    TAGGER: (("wave",), ("class_scores",)),
}

PRECISIONS = ("fp32", "fp16", "int8")

# onnxruntime's element type names -> numpy dtype names used in the manifest.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}

_HASH_CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle is missing, incomplete, corrupt or of another format version."""


def graph_file_name(graph: str, precision: str = "fp32") -> str:
    """``asm.onnx`` for fp32, ``asm.fp16.onnx`` for fp16, ``asm.int8.onnx`` for int8."""
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


def file_precision(path: str | Path) -> str:
    """The precision a graph file's name stands for (see :func:`graph_file_name`): "fp16", "int8" or "fp32"."""
    parts = Path(path).name.split(".")
    return parts[-2] if len(parts) >= 3 and parts[-2] in PRECISIONS else "fp32"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (ints, or strings for symbolic axes like "batch"), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(str(d["name"]), tuple(d["shape"]), str(d["dtype"]))


def session_io(session) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of an ``onnxruntime.InferenceSession`` as :class:`TensorSpec` lists."""

    def spec(arg) -> TensorSpec:
        shape = tuple(d if isinstance(d, (int, str)) else "?" for d in arg.shape)
        return TensorSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


@dataclass(frozen=True)
class GraphVariant:
    """One file of a graph at one precision, with the parity figures measured at export."""

    precision: str
    file: str
    sha256: str
    parity: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GraphInfo:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    variants: dict[str, GraphVariant]

    def variant(self, precision: str) -> GraphVariant | None:
        """The variant the runtime uses for ``precision``: for fp32 the int8 one when there is no fp32 one."""
        if precision == "fp32" and "fp32" not in self.variants:
            precision = "int8"
        return self.variants.get(precision)


@dataclass(frozen=True)
class TaggerInfo:
    """What the tagger's scores mean: the class of each column, and the time of each row (row i is centred at
    ``first_frame_seconds + i * frame_seconds`` into the window)."""

    classes: tuple[str, ...]
    first_frame_seconds: float
    frame_seconds: float


@dataclass(frozen=True)
class Bundle:
    """A validated bundle. Build it with :meth:`load`."""

    folder: Path
    manifest: dict
    sample_rate: int
    window_samples: int
    embedding_dim: int
    max_text_tokens: int
    one_stage: bool
    graphs: dict[str, GraphInfo]
    tokenizer_path: Path
    tagger: TaggerInfo | None = None

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def provenance(self) -> dict:
        return self.manifest.get("provenance", {})

    def has_precision(self, precision: str) -> bool:
        """True when every graph has a variant for this precision (see :meth:`GraphInfo.variant`)."""
        return all(g.variant(precision) is not None for g in self.graphs.values())

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        """The file of ``graph`` for ``precision`` (see :meth:`GraphInfo.variant`)."""
        if graph not in self.graphs:
            raise BundleError(f"bundle {self.folder} has no {graph} graph")
        variant = self.graphs[graph].variant(precision)
        if variant is None:
            raise BundleError(f"bundle {self.folder} has no {precision} variant of {graph} "
                              f"(it has {sorted(self.graphs[graph].variants)}); export it with --fp16 for fp16 "
                              f"graphs")
        return self.folder / variant.file

    @classmethod
    def load(cls, folder: str | Path, check_graphs: bool = True) -> "Bundle":
        """Read ``folder``, check the manifest, every file's sha256 and (``check_graphs``) that onnxruntime
        loads every graph with the inputs and outputs the manifest lists. Raises :class:`BundleError`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise BundleError(f"model bundle folder {folder} does not exist")
        manifest = _read_manifest(folder)
        where = folder / MANIFEST_FILE
        try:
            sizes = {k: manifest[k] for k in ("sample_rate", "window_samples", "embedding_dim", "max_text_tokens")}
            one_stage = manifest["one_stage"]
            graph_entries = manifest["graphs"]
            tokenizer_entry = manifest["tokenizer"]
        except KeyError as e:
            raise BundleError(f"{where} lacks the field {e.args[0]!r}") from None
        for key, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BundleError(f"{where}: {key} must be a positive integer, got {value!r}")
        if not isinstance(one_stage, bool):
            raise BundleError(f"{where}: one_stage must be true or false, got {one_stage!r}")
        if not isinstance(graph_entries, dict):
            raise BundleError(f"{where}: graphs must be an object")

        expected = {TEXT_ENCODER, ASM, AUDIO_ENCODER} | (set() if one_stage else {AET})
        missing = expected - set(graph_entries)
        unexpected = set(graph_entries) - expected - {TAGGER}
        if missing:
            raise BundleError(f"{where} lists no {', '.join(sorted(missing))} graph")
        if unexpected:
            raise BundleError(f"{where} lists graphs this runtime does not know or expect: "
                              f"{', '.join(sorted(unexpected))} (one_stage={one_stage})")

        graphs = {name: _graph_info(folder, name, entry) for name, entry in graph_entries.items()}
        _check_sizes(where, graphs, sizes)
        tokenizer_path = _checked_file(folder, tokenizer_entry, "tokenizer")
        _check_tokenizer(tokenizer_path)
        tagger = _tagger_info(where, manifest, graphs)
        if check_graphs:
            for graph in graphs.values():
                for variant in graph.variants.values():
                    _check_graph_loads(folder / variant.file, graph)
        return cls(folder, manifest, sizes["sample_rate"], sizes["window_samples"], sizes["embedding_dim"],
                   sizes["max_text_tokens"], one_stage, graphs, tokenizer_path, tagger)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{folder} is not a model bundle: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a Hybrid-Sep bundle manifest (its \"format\" is not {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        advice = ("upgrade hybridsep" if isinstance(version, int) and version > FORMAT_VERSION
                  else "re-export it with this version's `hybridsep export`")
        raise BundleError(f"{path} has bundle format version {version!r} but this runtime reads version "
                          f"{FORMAT_VERSION}: {advice}")
    return manifest


def _checked_file(folder: Path, entry: Any, what: str) -> Path:
    """The path of a manifest file entry ({"file", "sha256"}) after checking it exists and its hash."""
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)):
        raise BundleError(f"{folder / MANIFEST_FILE}: the {what} entry needs \"file\" and \"sha256\" strings")
    path = folder / entry["file"]
    if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
        raise BundleError(f"{folder / MANIFEST_FILE}: {what} file {entry['file']!r} is not inside the bundle")
    if not path.is_file():
        raise BundleError(f"bundle {folder} is incomplete: {entry['file']} ({what}) is missing")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise BundleError(f"{path} is corrupt or was changed: its sha256 is {actual}, the manifest says "
                          f"{entry['sha256']}")
    return path


def _graph_info(folder: Path, name: str, entry: Any) -> GraphInfo:
    where = f"{folder / MANIFEST_FILE}: graph {name}"
    try:
        inputs = tuple(TensorSpec.from_dict(d) for d in entry["inputs"])
        outputs = tuple(TensorSpec.from_dict(d) for d in entry["outputs"])
        variant_entries = entry["variants"]
    except (KeyError, TypeError) as e:
        raise BundleError(f"{where} is malformed ({type(e).__name__}: {e})") from None
    expected_inputs, expected_outputs = GRAPH_IO[name]
    if tuple(s.name for s in inputs) != expected_inputs or tuple(s.name for s in outputs) != expected_outputs:
        raise BundleError(f"{where} has inputs {[s.name for s in inputs]} and outputs {[s.name for s in outputs]}; "
                          f"this runtime needs {list(expected_inputs)} -> {list(expected_outputs)}")
    if not isinstance(variant_entries, dict) or not {"fp32", "int8"} & set(variant_entries):
        raise BundleError(f"{where} has neither an fp32 nor an int8 variant")
    variants = {}
    for precision, variant in variant_entries.items():
        if precision not in PRECISIONS:
            raise BundleError(f"{where}: unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        _checked_file(folder, variant, f"{name} {precision} graph")
        variants[precision] = GraphVariant(precision, variant["file"], variant["sha256"], variant.get("parity", {}))
    return GraphInfo(name, inputs, outputs, variants)


def _check_sizes(where: Path, graphs: dict[str, GraphInfo], sizes: dict[str, int]) -> None:
    """The window and embedding sizes in the graphs' shapes agree with the manifest's."""
    window, embedding = sizes["window_samples"], sizes["embedding_dim"]
    wanted = {
        (ASM, "mixture"): window, (ASM, "target_embedding"): embedding, (ASM, "separated"): window,
        (AET, "mixture"): window, (AET, "text_embedding"): embedding, (AET, "target_embedding"): embedding,
        (TEXT_ENCODER, "text_embedding"): embedding,
        (AUDIO_ENCODER, "wave"): window, (AUDIO_ENCODER, "audio_embedding"): embedding,
        (TAGGER, "wave"): window,
    }
    for (graph, tensor), size in wanted.items():
        if graph not in graphs:
            continue
        spec = next(s for s in (*graphs[graph].inputs, *graphs[graph].outputs) if s.name == tensor)
        if len(spec.shape) != 2 or spec.shape[1] != size:
            raise BundleError(f"{where}: {graph} {tensor} has shape {list(spec.shape)}, expected [batch, {size}]")


def _tagger_info(where: Path, manifest: dict, graphs: dict[str, GraphInfo]) -> TaggerInfo | None:
    """The manifest's "tagger" entry, which a bundle with a tagger graph must have and one without must not."""
    entry = manifest.get("tagger")
    if (entry is None) != (TAGGER not in graphs):
        raise BundleError(f"{where}: a tagger graph and a \"tagger\" entry come together; this bundle has only one")
    if entry is None:
        return None
    try:
        classes = tuple(entry["classes"])
        info = TaggerInfo(classes, float(entry["first_frame_seconds"]), float(entry["frame_seconds"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: the tagger entry is malformed ({type(e).__name__}: {e})") from None
    if not classes or not all(isinstance(c, str) for c in classes) or info.frame_seconds <= 0:
        raise BundleError(f"{where}: the tagger entry needs class names and a positive frame_seconds")
    spec = graphs[TAGGER].outputs[0]
    if len(spec.shape) != 3 or spec.shape[2] != len(classes):
        raise BundleError(f"{where}: the tagger's class_scores have shape {list(spec.shape)}, expected "
                          f"[batch, frames, {len(classes)}]")
    return info


def _check_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception on malformed files
        raise BundleError(f"{path} is not a valid tokenizers file: {e}") from None


def _check_graph_loads(path: Path, graph: GraphInfo) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a load check: fast
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise BundleError(f"{path} is not a loadable ONNX graph: {e}") from None
    inputs, outputs = session_io(session)
    if tuple(inputs) != graph.inputs or tuple(outputs) != graph.outputs:
        listed = [s.to_dict() for s in (*graph.inputs, *graph.outputs)]
        actual = [s.to_dict() for s in (*inputs, *outputs)]
        raise BundleError(f"{path} does not match the manifest: the graph has inputs/outputs {actual}, "
                          f"the manifest lists {listed}")
