"""The ONNX Runtime session: provider choice, and backend errors translated at the boundary."""

from __future__ import annotations

from importlib import metadata

import numpy as np

from .errors import MissingExtraError, ModelFilesError, UsageError
from .manifest import Manifest

DEVICES = ("auto", "cpu", "cuda")
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


def providers_for(device: str, available: list[str]) -> list[str]:
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}")
    cuda = "CUDAExecutionProvider" in available
    if device == "cuda":
        if not cuda:
            raise UsageError(
                "--device cuda: this ONNX Runtime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); pip install 'rfedge[gpu]' in a fresh environment")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class GraphSession:
    """A loaded graph with the manifest's inputs and outputs. ``run`` is thread-safe (ORT sessions are)."""

    def __init__(self, manifest: Manifest, device: str = "auto", threads: int = 0):
        ort = _import_ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.providers = providers_for(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(manifest.graph_path), options, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelFilesError(
                f"{manifest.graph_path}: ONNX Runtime {ort.__version__} cannot load this graph ({msg}); "
                "re-export it or upgrade onnxruntime") from None
        names_in = tuple(i.name for i in self._session.get_inputs())
        names_out = tuple(o.name for o in self._session.get_outputs())
        if set(names_in) != set(manifest.inputs) or set(names_out) != set(manifest.outputs):
            raise ModelFilesError(
                f"{manifest.graph_path}: graph inputs {list(names_in)} and outputs {list(names_out)} do not "
                f"match the manifest ({list(manifest.inputs)} -> {list(manifest.outputs)}); re-export the model")
        self.device = "cuda" if self.providers[0].startswith("CUDA") else "cpu"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            step_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        step, traj = self._session.run(
            ["step_rewards", "trajectory_reward"],
            {"input_ids": input_ids, "attention_mask": attention_mask, "step_index": step_index})
        return step, traj
