"""The exported inference graphs: thin torch wrappers whose forward is exactly one ONNX graph of the bundle.

- `AETGraph`:  (mixture (B, N), text_emb (B, E)) -> target_emb (B, E)   (CLAP audio encoder + FE + AET)
- `ASMGraph`:  (mixture (B, N), target_emb (B, E)) -> separated (B, N)  (PQMF, STFT, BEATs, stack, iSTFT, iPQMF)
- the text and audio embedding graphs are `training.models.clap.TextEmbeddingGraph` / `AudioEmbeddingGraph`.

`export_graph` writes one of them to ONNX; `convert_to_fp16` makes the fp16 variant of an exported graph.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.hybridsep import HybridSep

OPSET = 17


class AETGraph(nn.Module):
    def __init__(self, model: HybridSep):
        super().__init__()
        if model.aet is None:
            raise ValueError("a one-stage model has no AET graph")
        self.model = model

    def forward(self, mixture: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.model.target_embedding(mixture, text_emb)


class ASMGraph(nn.Module):
    def __init__(self, model: HybridSep):
        super().__init__()
        self.asm = model.asm

    def forward(self, mixture: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
        return self.asm(mixture, target_emb)[0]


def export_graph(graph: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
                 output_names: list[str], path, dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """Export with a dynamic batch axis; the window length is fixed by the model (the bundle's window).

    ``dynamic_axes`` adds named dynamic axes beyond the batch, e.g. ``{"input_ids": {1: "tokens"}}``.
    """
    dynamic = {name: {0: "batch"} for name in input_names + output_names}
    for name, axes in (dynamic_axes or {}).items():
        dynamic[name] = {**dynamic.get(name, {}), **axes}
    with torch.no_grad():
        torch.onnx.export(graph.eval(), inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    _fix_output_shapes(path, {name: t.numpy() for name, t in zip(input_names, inputs)}, dynamic)


def _fix_output_shapes(path, feeds: dict, dynamic: dict[str, dict[int, str]]) -> None:
    """Write the sizes onnxruntime computes for ``feeds`` into the output axes the exporter left symbolic
    (e.g. the separated window's length, which it cannot infer through the iSTFT), keeping the declared
    dynamic axes symbolic."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    unknown = [(output, axis, dim) for output in model.graph.output
               for axis, dim in enumerate(output.type.tensor_type.shape.dim)
               if axis not in dynamic.get(output.name, {}) and not dim.HasField("dim_value")]
    if not unknown:
        return
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    shapes = dict(zip(names, (value.shape for value in session.run(names, feeds))))
    for output, axis, dim in unknown:
        dim.dim_value = shapes[output.name][axis]
    onnx.save(model, str(path))


# ----------------------------------------------------------------------------------------------------------
# fp16 variants (for CUDA).

# Op types kept in fp32: normalisation statistics, softmax, powers and roots, the LSTM recurrences, logs and
# exps, divisions and reductions overflow or lose precision in fp16; ConvTranspose is the iSTFT / iPQMF
# overlap-add of this model; DequantizeLinear restores YAMNet's int8-stored weights (its output type is the scale's).
FP16_BLOCKED_OPS = (
    "LayerNormalization", "BatchNormalization", "Softmax", "Pow", "Sqrt", "LSTM", "Log", "Exp", "Div",
    "ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax", "ConvTranspose", "DequantizeLinear",
)
# Modules whose nodes stay in fp32: the DSP front-ends (DFT bases, mel and fbank filters, resampling
# kernels, PQMF). Their intermediate values (power spectra, 2^15-scaled fbank input) exceed fp16's range.
FP16_BLOCKED_SCOPES = ("resample", "spectrogram", "stft", "pqmf", "log_mel", "mel", "fbank")


def fp16_blocked_nodes(model) -> list[str]:
    """Names of the nodes inside the DSP modules (the exporter names nodes ``/module/submodule/Op``) and of the
    nodes that compute a table from constants (``table_nodes``)."""
    scopes = set(FP16_BLOCKED_SCOPES)
    in_scope = [node.name for node in model.graph.node if scopes & set(node.name.split("/")[:-1])]
    return sorted(set(in_scope) | set(table_nodes(model)))


def table_nodes(model) -> list[str]:
    """Names of the nodes that compute a table from constants alone, and of the Constant nodes they read: the
    DFT bases an exported graph computes (``training.models.stft.ComputedInGraph``). They stay float32: the
    sample x bin products exceed fp16's range, and ONNX Runtime folds them into tables when it loads the graph.
    """
    constant = {init.name for init in model.graph.initializer}
    constant_nodes = {}
    computing = []
    for node in model.graph.node:  # exported graphs are in topological order
        if node.op_type == "Constant":
            constant_nodes[node.output[0]] = node.name
            constant.update(node.output)
        elif node.op_type != "Identity" and node.input and all(name in constant for name in node.input if name):
            computing.append(node)  # (an Identity of a constant is a shared weight, not a table)
            constant.update(node.output)
    read = {name for node in computing for name in node.input}
    return [node.name for node in computing] + [name for output, name in constant_nodes.items() if output in read]


def convert_to_fp16(source, destination) -> None:
    """Write an fp16 copy of the ONNX graph at ``source``: weights and activations in fp16 except the
    blocked ops and DSP modules above; inputs and outputs stay float32, so the variant is a drop-in.

    Uses the float16 converter that ships with onnxruntime (``onnxruntime.transformers.float16``), then
    removes the fp32 -> fp16 -> fp32 cast pairs it leaves between two fp32 nodes (they would round, and
    overflow, values that never needed to be fp16).
    """
    import onnx
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_BLOCKED_OPS),
        node_block_list=fp16_blocked_nodes(model),
    )
    _remove_round_trip_casts(converted.graph)
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    onnx.checker.check_model(wrapped.model)
    onnx.save(wrapped.model, str(destination))


def _remove_round_trip_casts(graph) -> None:
    """Connect the consumers of ``Cast(to fp32)(Cast(to fp16)(x))`` straight to ``x`` when x is float32, then
    drop the casts nobody reads any more."""
    from onnx import TensorProto

    def cast_to(node) -> int | None:
        if node.op_type != "Cast":
            return None
        return next(a.i for a in node.attribute if a.name == "to")

    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input)}
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    replace = {}
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT or node.output[0] in graph_outputs:
            continue
        upstream = producer.get(node.input[0])
        if upstream is not None and cast_to(upstream) == TensorProto.FLOAT16:
            if types.get(upstream.input[0]) == TensorProto.FLOAT:
                replace[node.output[0]] = upstream.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    while True:  # drop casts whose outputs are unread (a dropped fp32 cast may orphan its fp16 cast)
        read = {name for node in graph.node for name in node.input} | graph_outputs
        unread = [node for node in graph.node if node.op_type == "Cast" and node.output[0] not in read]
        if not unread:
            return
        for node in unread:
            graph.node.remove(node)
