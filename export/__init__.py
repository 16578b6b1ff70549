"""rfedge_export: export tooling (torch, transformers, onnx). Never imported by the runtime."""
