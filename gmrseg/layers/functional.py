"""The three ways to compute a GMR convolution: dense, ring-decomposed and spectral.

All three compute the same cross-correlation as ``F.conv3d`` / ``F.conv2d`` with the
kernel ``K[o, i] = sum_l W[o, i, l] R_l``; they differ only in cost:

- ``dense_conv``: build ``K`` and call the library convolution
  (``C_out * C_in / groups * k^D`` multiply-adds per output voxel).
- ``ring_conv``: filter every input channel with the ``n`` rings (a depthwise
  convolution), then mix the ``C_in * n`` ring responses with a 1x1 convolution
  (``C_in * n * k^D + C_out * C_in / groups * n`` per voxel).
- ``spectral_conv``: one real FFT of the input, the rings applied as real
  frequency responses, the channel mixing as real matrix products over the real and
  imaginary parts, one inverse FFT per output channel. Its cost does not grow with ``k``.

Padding is given as ``(padding, padding_mode)`` like ``nn.Conv3d``; every function
accepts any stride, dilation and groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "pad_input",
    "dense_conv",
    "ring_conv",
    "ring_spectra",
    "spectral_mix",
    "spectral_conv",
    "fft_shape",
]

_CONV = {2: F.conv2d, 3: F.conv3d}


def pad_input(x: torch.Tensor, padding: int, padding_mode: str, spatial_dims: int) -> tuple[torch.Tensor, int]:
    """Apply a non-zero padding mode explicitly; return the input and the zero padding still to apply."""
    if padding_mode == "zeros" or padding == 0:
        return x, padding
    return F.pad(x, (padding,) * (2 * spatial_dims), mode=padding_mode), 0


def dense_conv(
    x: torch.Tensor,
    kernel: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> torch.Tensor:
    """Convolve with the dense kernel ``(C_out, C_in / groups, k, ..., k)``; ``padding`` is zero padding."""
    spatial_dims = kernel.dim() - 2
    return _CONV[spatial_dims](x, kernel, bias, stride, padding, dilation, groups)


def ring_conv(
    x: torch.Tensor,
    rings: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> torch.Tensor:
    """Filter each input channel with every ring, then mix the responses with a 1x1 convolution.

    Args:
        x: input ``(B, C_in, *spatial)``.
        rings: ring basis ``(n, k, ..., k)``.
        weight: ring weights ``(C_out, C_in / groups, n)``.
        bias: ``(C_out,)`` or None.
        stride, padding, dilation, groups: as for ``F.conv3d``; ``padding`` is zero padding.

    Returns:
        Output ``(B, C_out, *spatial_out)``.
    """
    spatial_dims = rings.dim() - 1
    conv = _CONV[spatial_dims]
    in_channels = x.shape[1]

    # Depthwise ring filtering: output channel c * n + l is input channel c filtered by ring l.
    depthwise = rings.unsqueeze(1).repeat(in_channels, 1, *([1] * spatial_dims))
    responses = conv(x, depthwise, None, stride, padding, dilation, in_channels)

    # Channel mixing: group g of the 1x1 convolution reads the responses of its own input channels.
    mixing = weight.reshape(weight.shape[0], -1, *([1] * spatial_dims))
    return conv(responses, mixing, bias, 1, 0, 1, groups)


def fft_shape(sizes: tuple[int, ...], padding: int, reach: int = 0) -> tuple[int, ...]:
    """Return the circular grid of the spectral strategy: one 7-smooth FFT size per axis.

    The grid has at least ``size + padding`` voxels, so the implicit zero padding
    never wraps into the output (see ``spectral_conv``), and at least the output size
    ``size + 2 * padding - 2 * reach`` (``reach = dilation * (k // 2)``). Rounding up to a
    size whose prime factors are 2, 3, 5 or 7 keeps the FFT on its fast paths.
    """
    extra = max(padding, 2 * padding - 2 * reach)
    return tuple(_next_smooth(size + extra) for size in sizes)


def _next_smooth(n: int) -> int:
    candidate = max(n, 1)
    while True:
        rest = candidate
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return candidate
        candidate += 1


def ring_spectra(rings: torch.Tensor, shape: tuple[int, ...], dilation: int) -> torch.Tensor:
    """Return the real frequency responses of the rings on a circular grid, shape ``(n, *rfft_shape)``.

    Each ring is dilated, placed with its centre at index 0 (negative offsets wrap
    around) and transformed with ``rfftn``. A ring is real and symmetric about its
    centre, so its spectrum is real: the imaginary part is rounding noise and dropped.
    """
    num_rings = rings.shape[0]
    spatial_dims = rings.dim() - 1
    kernel_size = rings.shape[-1]
    radius = dilation * (kernel_size // 2)
    extent = dilation * (kernel_size - 1) + 1

    placed = rings
    if dilation > 1:
        placed = rings.new_zeros((num_rings,) + (extent,) * spatial_dims)
        placed[(slice(None),) + (slice(None, None, dilation),) * spatial_dims] = rings
    pad = []
    for size in reversed(shape):
        pad += [0, size - extent]
    placed = F.pad(placed, pad)
    dims = tuple(range(1, spatial_dims + 1))
    placed = torch.roll(placed, shifts=(-radius,) * spatial_dims, dims=dims)
    return torch.fft.rfftn(placed, dim=dims).real.contiguous()


# Frequencies are processed in slabs of this many real numbers (real and imaginary parts
# interleaved), so the per-ring temporaries stay small next to the spectra themselves.
# Slabs of 2^15 ran about 1.6x slower on a 2-core CPU (PyTorch 2.13), 2^17 as fast as none.
_SLAB = 1 << 17


def _slabs(length: int):
    for start in range(0, length, _SLAB):
        yield slice(start, min(start + _SLAB, length))


def _split_groups(spectrum: torch.Tensor, weight: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the spectrum as real numbers ``(B, groups, C_in/g, 2P)`` and weight as ``(groups, C_out/g, C_in/g, n)``."""
    out_channels, in_per_group, num_rings = weight.shape
    x = torch.view_as_real(spectrum).reshape(spectrum.shape[0], groups, in_per_group, -1)
    return x, weight.view(groups, out_channels // groups, in_per_group, num_rings)


def _mix_forward(spectrum: torch.Tensor, weight: torch.Tensor, responses: torch.Tensor, groups: int) -> torch.Tensor:
    """Return ``sum_l W_l (R_l * X)`` as real numbers ``(B, groups, C_out/g, 2P)``."""
    x, w = _split_groups(spectrum, weight, groups)
    num_rings = w.shape[-1]
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        # One expression per ring keeps traced and compiled graphs free of slab loops.
        return sum(torch.matmul(w[..., ring], x * responses[ring]) for ring in range(num_rings))

    out = x.new_empty(x.shape[0], groups, w.shape[1], x.shape[-1])
    for slab in _slabs(x.shape[-1]):
        x_slab = x[..., slab]
        total = torch.matmul(w[..., 0], x_slab * responses[0, slab])
        for ring in range(1, num_rings):
            total.add_(torch.matmul(w[..., ring], x_slab * responses[ring, slab]))
        out[..., slab] = total
    return out


class _SpectralMix(torch.autograd.Function):
    """Frequency-domain channel mixing with a memory-lean backward pass.

    Autograd through ``_mix_forward`` would store one product per ring; this function
    stores only the input spectrum and works through the frequencies slab by slab.
    """

    @staticmethod
    def forward(ctx, spectrum, weight, responses, groups):
        ctx.save_for_backward(spectrum, weight, responses)
        ctx.groups = groups
        return _mix_forward(spectrum, weight, responses, groups)

    @staticmethod
    def backward(ctx, grad_out):
        spectrum, weight, responses = ctx.saved_tensors
        x, w = _split_groups(spectrum, weight, ctx.groups)
        num_rings = w.shape[-1]
        grad_out = grad_out.contiguous()
        need_x, need_w, need_r = ctx.needs_input_grad[:3]

        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_r = torch.empty_like(responses) if need_r else None
        for slab in _slabs(x.shape[-1]):
            x_slab = x[..., slab]
            g_slab = grad_out[..., slab]
            grad_x_slab = None
            for ring in range(num_rings):
                if need_x or need_r:
                    back = torch.matmul(w[..., ring].transpose(-1, -2), g_slab)
                    if need_r:
                        grad_r[ring, slab] = (back * x_slab).sum(dim=(0, 1, 2))
                    if need_x:
                        back.mul_(responses[ring, slab])
                        grad_x_slab = back if grad_x_slab is None else grad_x_slab.add_(back)
                if need_w:
                    product = torch.matmul(g_slab, (x_slab * responses[ring, slab]).transpose(-1, -2))
                    grad_w[..., ring] += product.sum(0)
            if need_x:
                grad_x[..., slab] = grad_x_slab

        if grad_x is not None:
            grad_x = torch.view_as_complex(grad_x.view(*spectrum.shape, 2))
        if grad_w is not None:
            grad_w = grad_w.reshape(weight.shape)
        return grad_x, grad_w, grad_r, None


def spectral_mix(spectrum: torch.Tensor, weight: torch.Tensor, responses: torch.Tensor, groups: int) -> torch.Tensor:
    """Apply rings and channel mixing to an input spectrum.

    Args:
        spectrum: complex input spectrum ``(B, C_in, *rfft_shape)``.
        weight: ring weights ``(C_out, C_in / groups, n)``.
        responses: real ring spectra ``(n, *rfft_shape)``.
        groups: channel groups.

    Returns:
        Complex output spectrum ``(B, C_out, *rfft_shape)``.
    """
    batch = spectrum.shape[0]
    out_shape = (batch, weight.shape[0]) + tuple(spectrum.shape[2:]) + (2,)

    # Both real and imaginary parts are scaled by the same real response.
    responses = responses.reshape(responses.shape[0], -1, 1).expand(-1, -1, 2).reshape(responses.shape[0], -1)
    needs_graph = torch.is_grad_enabled() and (
        spectrum.requires_grad or weight.requires_grad or responses.requires_grad
    )
    if needs_graph and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        mixed = _SpectralMix.apply(spectrum, weight, responses, groups)
    else:
        mixed = _mix_forward(spectrum, weight, responses, groups)
    return torch.view_as_complex(mixed.reshape(out_shape))


def spectral_conv(
    x: torch.Tensor,
    responses: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: int,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """Convolve through the frequency domain on the circular grid ``shape``.

    The input is zero-extended to ``shape`` (at least ``size + padding`` per axis, see
    ``fft_shape``), so the zeros past its end double as the zero padding before its start
    once indices wrap around. A GMR kernel is symmetric, so cross-correlation equals
    convolution, and output voxel ``j`` of the padded correlation is voxel
    ``j + dilation * (k // 2) - padding`` (modulo the grid) of the circular convolution.

    Args:
        x: input ``(B, C_in, *spatial)``, float32 or float64.
        responses: ring spectra from ``ring_spectra(rings, shape, dilation)``.
        weight: ring weights ``(C_out, C_in / groups, n)``.
        bias: ``(C_out,)`` or None.
        kernel_size, stride, padding, dilation, groups: as for ``F.conv3d``.
        shape: circular grid, one size per spatial axis.

    Returns:
        Output ``(B, C_out, *spatial_out)``, the same as ``F.conv3d`` up to rounding.
    """
    spatial_dims = x.dim() - 2
    dims = tuple(range(2, spatial_dims + 2))
    reach = dilation * (kernel_size // 2)

    spectrum = torch.fft.rfftn(x, s=shape, dim=dims)
    mixed = spectral_mix(spectrum, weight, responses, groups)
    full = torch.fft.irfftn(mixed, s=shape, dim=dims)

    # Crop the valid voxels (and apply the stride); shift first when the padding exceeds the kernel's reach.
    start = reach - padding
    if start < 0:
        full = torch.roll(full, shifts=(-start,) * spatial_dims, dims=dims)
        start = 0
    index = [slice(None), slice(None)]
    for size in x.shape[2:]:
        out_size = int(size) + 2 * padding - 2 * reach
        index.append(slice(start, start + out_size, stride))
    out = full[tuple(index)]
    if bias is not None:
        return out + bias.view(1, -1, *([1] * spatial_dims))
    return out.contiguous()
