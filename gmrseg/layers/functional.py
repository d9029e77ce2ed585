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

import math

import torch
import torch.nn.functional as F

__all__ = [
    "pad_input",
    "dense_conv",
    "ring_conv",
    "ring_spectra",
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


# Output channels go through the frequency domain in this many chunks (fewer when a group
# has fewer channels), so the per-chunk temporaries stay a fraction of one full spectrum.
_CHUNKS = 8


def _row_chunks(out_channels: int, groups: int, chunks: int = _CHUNKS):
    """Yield ``(group, rows)``: slices of output channels, ``chunks`` or fewer per group."""
    per_group = out_channels // groups
    step = -(-per_group // chunks)
    for group in range(groups):
        for first in range(group * per_group, (group + 1) * per_group, step):
            yield group, slice(first, min(first + step, (group + 1) * per_group))


def _interleaved(responses: torch.Tensor) -> torch.Tensor:
    """Return real ring responses ``(n, *rfft_shape)`` repeated for real and imaginary parts, ``(n, 2P)``."""
    return responses.reshape(responses.shape[0], -1, 1).expand(-1, -1, 2).reshape(responses.shape[0], -1)


def _real_spectrum(x: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return ``rfftn(x)`` on the grid as real numbers ``(B, C, 2P)`` and the complex shape ``rfft_shape``.

    Channels are transformed in chunks, so the zero-extended copy that ``rfftn`` makes of
    its input never spans all channels at once.
    """
    dims = tuple(range(2, x.dim()))
    rfft_shape = tuple(shape[:-1]) + (shape[-1] // 2 + 1,)
    real = x.new_empty(x.shape[0], x.shape[1], 2 * math.prod(rfft_shape))
    for _, rows in _row_chunks(x.shape[1], 1):
        real[:, rows] = torch.view_as_real(torch.fft.rfftn(x[:, rows], s=shape, dim=dims)).flatten(2)
    return real, rfft_shape


def _inverse(real: torch.Tensor, rfft_shape: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """Return ``irfftn`` on the grid of a real-number spectrum ``(B, C, 2P)``, shape ``(B, C, *shape)``."""
    dims = tuple(range(2, len(shape) + 2))
    spectrum = torch.view_as_complex(real.reshape(*real.shape[:2], *rfft_shape, 2))
    return torch.fft.irfftn(spectrum, s=shape, dim=dims)


def _output_slices(sizes, kernel_size: int, stride: int, padding: int, dilation: int) -> tuple[int, tuple[slice, ...]]:
    """Return ``(shift, slices)``: output voxel ``j`` is grid voxel ``j * stride`` after rolling the grid by ``-shift``.

    The padded correlation's voxel ``j`` is voxel ``j + dilation * (k // 2) - padding`` of the
    circular convolution (see ``spectral_conv``). ``shift`` is that offset.
    """
    reach = dilation * (kernel_size // 2)
    slices = tuple(slice(0, int(size) + 2 * padding - 2 * reach, stride) for size in sizes)
    return reach - padding, slices


def _crop(full: torch.Tensor, shift: int, slices: tuple[slice, ...]) -> torch.Tensor:
    """Return the output voxels of a full-grid result ``(B, C, *shape)``."""
    dims = tuple(range(2, full.dim()))
    if shift:
        full = torch.roll(full, shifts=(-shift,) * len(dims), dims=dims)
    return full[(slice(None), slice(None)) + slices]


def _uncrop(grad_out: torch.Tensor, shape: tuple[int, ...], shift: int, slices: tuple[slice, ...]) -> torch.Tensor:
    """Return the adjoint of ``_crop``: ``grad_out`` placed on a zero grid ``(B, C, *shape)``."""
    dims = tuple(range(2, grad_out.dim()))
    grid = grad_out.new_zeros(*grad_out.shape[:2], *shape)
    grid[(slice(None), slice(None)) + slices] = grad_out
    if shift:
        grid = torch.roll(grid, shifts=(shift,) * len(dims), dims=dims)
    return grid


def _hermitian_weights(shape: tuple[int, ...], rfft_shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Return ``(2P,)`` weights that turn half-spectrum sums into full-grid inner products.

    For real ``a``, ``b`` on the grid, ``sum a * b = sum_half w * (A_re B_re + A_im B_im)``
    with ``w = 2 / N`` where the half spectrum stands for a frequency and its mirror,
    and ``w = 1 / N`` on the last axis's zero (and, for an even size, Nyquist) index.
    """
    last = torch.full((rfft_shape[-1],), 2.0, dtype=like.dtype, device=like.device)
    last[0] = 1.0
    if shape[-1] % 2 == 0:
        last[-1] = 1.0
    total = 1
    for size in shape:
        total *= size
    weights = (last / total).expand(rfft_shape).reshape(-1, 1).expand(-1, 2)
    return weights.reshape(-1)


def _spectral_forward(x, responses, weight, bias, kernel_size, stride, padding, dilation, groups, shape):
    """Compute ``spectral_conv`` chunk by chunk of output channels, without an autograd graph."""
    batch = x.shape[0]
    out_channels, in_per_group, num_rings = weight.shape
    x_real, rfft_shape = _real_spectrum(x, shape)
    scale = _interleaved(responses)
    shift, slices = _output_slices(x.shape[2:], kernel_size, stride, padding, dilation)
    out_sizes = [len(range(*item.indices(item.stop))) for item in slices]
    out = x.new_empty(batch, out_channels, *out_sizes)

    for group, rows in _row_chunks(out_channels, groups):
        # One matrix product per chunk for all rings: (n * c, C_in / groups) @ (C_in / groups, 2P).
        stacked = weight[rows].permute(2, 0, 1).reshape(-1, in_per_group)
        terms = torch.matmul(stacked, x_real[:, group * in_per_group : (group + 1) * in_per_group])
        terms = terms.view(batch, num_rings, -1, terms.shape[-1])
        mixed = terms[:, 0].mul_(scale[0])
        for ring in range(1, num_rings):
            mixed.addcmul_(terms[:, ring], scale[ring])
        out[:, rows] = _crop(_inverse(mixed, rfft_shape, shape), shift, slices)
        del terms, mixed

    if bias is not None:
        out += bias.view(1, -1, *([1] * (x.dim() - 2)))
    return out


def _spectral_backward(grad_out, x, responses, weight, needs, kernel_size, stride, padding, dilation, groups, shape):
    """Return the gradients of ``spectral_conv`` for ``(x, responses, weight, bias)``; ``None`` where not needed.

    Forward is ``out = crop(irfftn(sum_l W_l R_l X))``. Its adjoint places ``grad_out`` on
    the grid (``_uncrop``) with spectrum ``G``. The input gradient is the same circular
    correlation with the channel-transposed weights, ``irfftn(sum_l W_l^T R_l G)`` cropped
    to the input, because every ring is symmetric and so has a real spectrum. The weight and
    response gradients are inner products over the grid, taken in the half spectrum with
    ``_hermitian_weights``. The input spectrum is recomputed here rather than saved.
    """
    need_x, need_r, need_w, need_b = needs
    batch = x.shape[0]
    out_channels, in_per_group, num_rings = weight.shape
    x_real, rfft_shape = _real_spectrum(x, shape)
    scale = _interleaved(responses)
    shift, slices = _output_slices(x.shape[2:], kernel_size, stride, padding, dilation)
    inner = _hermitian_weights(shape, rfft_shape, x_real) if (need_r or need_w) else None

    grad_spectrum = torch.zeros_like(x_real) if need_x else None
    grad_scale = x_real.new_zeros(num_rings, x_real.shape[-1]) if need_r else None
    grad_w = torch.zeros_like(weight) if need_w else None
    for group, rows in _row_chunks(out_channels, groups):
        channels = slice(group * in_per_group, (group + 1) * in_per_group)
        g_real, _ = _real_spectrum(_uncrop(grad_out[:, rows], shape, shift, slices), shape)
        stacked = weight[rows].permute(2, 0, 1).reshape(-1, in_per_group)
        for b in range(batch):
            if need_r:
                terms = torch.matmul(stacked, x_real[b, channels]).view(num_rings, -1, x_real.shape[-1])
                grad_scale += terms.mul_(g_real[b]).sum(dim=1)
                del terms
            if not (need_x or need_w):
                continue

            # Ring-scaled output gradients, all rings stacked: (n * c, 2P).
            scaled = (g_real[b].unsqueeze(0) * scale.unsqueeze(1)).flatten(0, 1)
            if need_x:
                grad_spectrum[b, channels].addmm_(stacked.t(), scaled)
            if need_w:
                products = torch.matmul(scaled.mul_(inner), x_real[b, channels].t())
                grad_w[rows] += products.view(num_rings, -1, in_per_group).permute(1, 2, 0)
            del scaled
    del x_real

    grad_x = None
    if need_x:
        grad_x = torch.empty_like(x)
        inputs = tuple(slice(0, int(size)) for size in x.shape[2:])
        for _, rows in _row_chunks(x.shape[1], 1):
            grad_x[:, rows] = _inverse(grad_spectrum[:, rows], rfft_shape, shape)[(slice(None), slice(None)) + inputs]

    grad_r = None
    if need_r:
        grad_r = (grad_scale * inner).view(num_rings, -1, 2).sum(-1).view_as(responses)
    grad_b = grad_out.sum(dim=(0,) + tuple(range(2, grad_out.dim()))) if need_b else None
    return grad_x, grad_r, grad_w, grad_b


class _SpectralConv(torch.autograd.Function):
    """Spectral convolution with a hand-written, memory-lean backward pass.

    Autograd through the FFTs and the channel mixing would keep the input spectrum, the
    mixed spectrum and the full-grid output alive. This function saves only its inputs,
    recomputes the input spectrum in backward and works through the output channels in
    chunks, so its peak memory stays near that of one full-grid spectrum.
    """

    @staticmethod
    def forward(ctx, x, responses, weight, bias, geometry):
        ctx.save_for_backward(x, responses, weight)
        ctx.geometry = geometry
        return _spectral_forward(x, responses, weight, bias, *geometry)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, responses, weight = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        grad_x, grad_r, grad_w, grad_b = _spectral_backward(grad_out, x, responses, weight, needs, *ctx.geometry)
        return grad_x, grad_r, grad_w, grad_b, None


def _traced_spectral_conv(x, responses, weight, bias, kernel_size, stride, padding, dilation, groups, shape):
    """Compute ``spectral_conv`` as plain tensor operations, for ``torch.jit.trace``, export and compile."""
    batch = x.shape[0]
    out_channels, in_per_group, num_rings = weight.shape
    x_real, rfft_shape = _real_spectrum(x, shape)
    x_real = x_real.reshape(batch, groups, in_per_group, -1)
    w = weight.view(groups, out_channels // groups, in_per_group, num_rings)
    scale = _interleaved(responses)
    mixed = sum(torch.matmul(w[..., ring], x_real) * scale[ring] for ring in range(num_rings))
    full = _inverse(mixed.reshape(batch, out_channels, -1), rfft_shape, shape)
    shift, slices = _output_slices(x.shape[2:], kernel_size, stride, padding, dilation)
    out = _crop(full, shift, slices)
    if bias is not None:
        return out + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return out.contiguous()


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
    The rings scale real and imaginary parts alike, and the channel mixing is a real
    matrix product per ring.

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
    geometry = (kernel_size, stride, padding, dilation, groups, tuple(shape))
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _traced_spectral_conv(x, responses, weight, bias, *geometry)

    tensors = (x, responses, weight) + (() if bias is None else (bias,))
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors):
        return _SpectralConv.apply(x, responses, weight, bias, geometry)
    return _spectral_forward(x, responses, weight, bias, *geometry)
