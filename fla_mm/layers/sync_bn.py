"""Cross-GPU batch norm that never makes the host wait for the GPU.

torch.nn.SyncBatchNorm's training forward drops the statistics of empty ranks with a boolean
mask (``count_all[mask]`` in torch/nn/modules/_functions.py, pytorch#78549). That makes the
host wait for the GPU at every layer. mmcv's MMSyncBN passes a tensor momentum where its
kernel takes a float, which is the same wait. UperNet's decode and auxiliary heads hold 13
such layers. When the step is host-bound (FLA's kernels are expensive to launch), each wait
empties the launch queue. The one-GPU run does not pay this: MMEngine turns SyncBN into
BatchNorm there. This layer all-reduces [sum, count] per channel and then the squared
deviations from the global mean (two small differentiable collectives), and no value ever
travels to the host.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class NonBlockingSyncBN(nn.BatchNorm2d):
    """Batch statistics over every rank's batch (SyncBN's math; biased variance for the
    normalisation, unbiased for the running estimate). Works on any number of dims >= 2.
    Outside a multi-process run, or at eval, it is plain BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f'NonBlockingSyncBN expects [N, C, ...] input, got {x.dim()}-D')

    def forward(self, x):
        self._check_input_dim(x)
        if not (self.training and _distributed()):
            return super().forward(x)
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        shape = [1, C] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // C, dtype=torch.float32, device=x.device)
        stats = all_reduce(torch.cat([xf.sum(dims), count]))
        total = stats[-1]
        mean = stats[:C] / total
        # second pass around the global mean: no cancellation for large-mean activations
        var = all_reduce((xf - mean.view(shape)).square().sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / self.num_batches_tracked if self.momentum is None
                            else self.momentum)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


__all__ = ['NonBlockingSyncBN']
