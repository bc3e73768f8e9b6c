"""Reading checkpoints made elsewhere into a `Mask2Former`, one module per job.

    from model.checkpoints import download, load_detectron2_checkpoint
    report = load_detectron2_checkpoint(model, download("coco_instance_r50"))
    print(report)

- `detectron2`: official `.pkl` files, read by an unpickler that builds containers and numpy arrays only.
- `pytorch`: torch `.pth` files and pickles of torch tensors (the ImageNet Swin weights), without torch.
- `huggingface`: `save_pretrained` folders (safetensors + config.json), without torch.
- `names`: the detectron2 name table (every tensor, its layout and its Keras variables, both ways) and
  loading a detectron2-named state; every reader above ends in it.
- `architecture`: the architecture a checkpoint's shapes imply (`ModelConfig` fields) and how it differs
  from a configured one (`cli.architecture_mismatch` says it with the flags that fix it).
- `download`: model-zoo files (`model_zoo.MODEL_ZOO`) cached once and checked.
"""

from model.checkpoints.architecture import architecture_differences, infer_model_config, model_architecture
from model.checkpoints.detectron2 import load_detectron2_checkpoint, read_detectron2_checkpoint
from model.checkpoints.download import download
from model.checkpoints.errors import CheckpointError, UnsafeCheckpointError
from model.checkpoints.huggingface import is_hf_checkpoint, load_hf_checkpoint, read_hf_checkpoint
from model.checkpoints.names import LoadReport, group_names, load_detectron2_state, to_detectron2_state
from model.checkpoints.pytorch import load_imagenet_backbone, read_torch_checkpoint

__all__ = [
    "CheckpointError",
    "LoadReport",
    "UnsafeCheckpointError",
    "architecture_differences",
    "download",
    "group_names",
    "infer_model_config",
    "is_hf_checkpoint",
    "load_detectron2_checkpoint",
    "load_detectron2_state",
    "load_hf_checkpoint",
    "load_imagenet_backbone",
    "model_architecture",
    "read_detectron2_checkpoint",
    "read_hf_checkpoint",
    "read_torch_checkpoint",
    "to_detectron2_state",
]
