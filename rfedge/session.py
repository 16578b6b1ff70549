"""The ONNX Runtime session: provider choice, and backend errors translated at the boundary."""

from __future__ import annotations

from importlib import metadata

import numpy as np

from .constants import DEVICES, WHY_NOT_CUDA
from .errors import MissingExtraError, ModelFilesError, RuntimeFailure, UsageError
from .interface import CACHED_OUTPUTS, POOLED_OUTPUTS, past_names, present_names
from .manifest import Manifest
from .onnxfile import check_external_data

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def _import_ort():
    installed = []
    for dist in ORT_DISTRIBUTIONS:
        try:
            metadata.version(dist)
            installed.append(dist)
        except metadata.PackageNotFoundError:
            pass
    if len(installed) > 1:
        raise UsageError(
            "both onnxruntime and onnxruntime-gpu are installed and break each other; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'rfedge[gpu]' (or 'rfedge[cpu]')")
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError(
            "rfedge needs an ONNX Runtime: pip install 'rfedge[cpu]' (or 'rfedge[gpu]' for CUDA)") from None
    return onnxruntime


def providers_for(device: str, available: list[str], manifest: Manifest | None = None) -> tuple[list[str], list[str]]:
    """ONNX Runtime providers for ``device`` and the graph, and notes for the user (what ``auto``
    chose and why, a graph off the device it was built for)."""
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}")
    built_for = manifest.devices if manifest else ("cpu", "cuda")
    cuda = "CUDAExecutionProvider" in available
    if device == "cuda":
        if manifest and "cuda" not in built_for:
            raise UsageError(
                f"--device cuda: {manifest.describe()} is an {manifest.precision} graph built for CPUs "
                f"({WHY_NOT_CUDA.get(manifest.precision, 'it has no CUDA kernels')}); score it with --device cpu, "
                "or export one for the GPU: rfedge export SOURCE --precision fp16")
        if not cuda:
            raise UsageError(
                "--device cuda: this ONNX Runtime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); pip install 'rfedge[gpu]' in a fresh environment")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], []
    notes = []
    if device == "auto" and cuda:
        if "cuda" in built_for:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"], []
        notes.append(f"--device auto: scoring on the CPU, not CUDA: this {manifest.precision} graph is built for "
                     "CPUs (export with --precision fp16 for the GPU)")
    if manifest and "cpu" not in built_for:
        notes.append(f"this {manifest.precision} graph is built for CUDA; on the CPU it runs several times slower "
                     "than an int8 export (rfedge export SOURCE --int8)")
    return ["CPUExecutionProvider"], notes


class GraphSession:
    """A loaded graph with the manifest's inputs and outputs. Runs are thread-safe (ORT sessions are)."""

    def __init__(self, manifest: Manifest, device: str = "auto", threads: int = 0):
        ort = _import_ort()
        self._ort = ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = threads
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.providers, self.notes = providers_for(device, ort.get_available_providers(), manifest)
        if self.providers[0] == "CPUExecutionProvider":
            # ONNX Runtime's CPU arena keeps the largest activations of any call for the session's life:
            # at the 1.5B shape, T=2048, 2.8 GB resident instead of 1.9, and no faster (README, Performance)
            options.enable_cpu_mem_arena = False
        self.graph_path = manifest.graph_path
        check_external_data(manifest)  # before ONNX Runtime opens any file the graph names
        try:
            self._session = ort.InferenceSession(str(manifest.graph_path), options, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise ModelFilesError(
                f"{manifest.graph_path}: ONNX Runtime {ort.__version__} cannot load this graph ({_first_line(e)}); "
                "re-export it or upgrade onnxruntime") from None
        names_in = tuple(i.name for i in self._session.get_inputs())
        names_out = tuple(o.name for o in self._session.get_outputs())
        if set(names_in) != set(manifest.inputs) or set(names_out) != set(manifest.outputs):
            raise ModelFilesError(
                f"{manifest.graph_path}: graph inputs {list(names_in)} and outputs {list(names_out)} do not "
                f"match the manifest ({list(manifest.inputs)} -> {list(manifest.outputs)}); re-export the model")
        # what ONNX Runtime actually runs on (it falls back to the CPU when CUDA's libraries are missing)
        self.device = "cuda" if self._session.get_providers()[0].startswith("CUDA") else "cpu"
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # a failed run reaches the user as one translated line only
        layers = manifest.cache.layers if manifest.cache else 0
        self._past, self._present = past_names(layers), present_names(layers)  # layer order, whatever the manifest's
        if manifest.cache:
            _check_cache_shape(manifest, {i.name: i.shape for i in self._session.get_inputs()})

    def _failed(self, e: Exception) -> RuntimeFailure:
        return RuntimeFailure(f"{self.graph_path}: ONNX Runtime failed while scoring ({_first_line(e)})")

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            step_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pooled interface (format 1): rewards at ``step_index`` and at each row's last token."""
        try:
            step, traj = self._session.run(
                list(POOLED_OUTPUTS),
                {"input_ids": input_ids, "attention_mask": attention_mask, "step_index": step_index},
                self._run_options)
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise self._failed(e) from None
        return step, traj

    def run_cached(self, input_ids: np.ndarray, attention_mask: np.ndarray, past_length: np.ndarray,
                   kv) -> tuple[np.ndarray, np.ndarray]:
        """The cached interface: per-token rewards [B,S] of the new tokens; ``kv`` (a
        :class:`~rfedge.kvcache.KVBuffers`) gets the new tokens' keys and values written in place."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "past_length": past_length}
        try:
            if self.device == "cpu":
                return self._run_in_place(feeds, kv)
            outputs = self._session.run(None, {**feeds, **dict(zip(self._past, kv.arrays, strict=True))},
                                        self._run_options)
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise self._failed(e) from None
        named = dict(zip((o.name for o in self._session.get_outputs()), outputs, strict=True))
        for name, array in zip(self._present, kv.arrays, strict=True):
            array[...] = named[name]
        return named[CACHED_OUTPUTS[0]], named[CACHED_OUTPUTS[1]]

    def _run_in_place(self, feeds: dict, kv) -> tuple[np.ndarray, np.ndarray]:
        """One buffer bound to both past and present: ONNX Runtime sees the same pointer and
        writes the new rows into it, with no copy of the cache."""
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in CACHED_OUTPUTS:
            binding.bind_output(name)
        for past, present, array in zip(self._past, self._present, kv.arrays, strict=True):
            value = self._ort.OrtValue.ortvalue_from_numpy(array)
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        self._session.run_with_iobinding(binding, self._run_options)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), outputs[1].numpy()


def _check_cache_shape(manifest: Manifest, shapes: dict) -> None:
    """Each K/V input is [batch, kv_heads, capacity, head_dim] with the manifest's cache dims."""
    c = manifest.cache
    for name in past_names(c.layers):
        shape = list(shapes[name])
        if len(shape) != 4 or shape[1] != c.kv_heads or shape[3] != c.head_dim:
            raise ModelFilesError(
                f"{manifest.graph_path}: graph input {name} has shape {shape}, but the manifest's cache is "
                f"[batch, {c.kv_heads}, capacity, {c.head_dim}] (kv_heads, head_dim); re-export the model")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
