"""Images in and out of the explorer: uploads decoded strictly, answers as PNG data URIs at the model's size."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vaelab.serve.limits import RequestError

UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


def png_data_uri(image: torch.Tensor) -> str:
    """One image (C, H, W), float in [0, 1] or uint8, as a `data:image/png;base64,...` URI at its own size."""
    x = image.detach().cpu()
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = x.numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_upload(data: bytes, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The bytes of an uploaded image as uint8 (1, C, H, W) in the model's channels.

    Strict about the size (422 naming the expected one: resizing is the client's choice) and checks it
    from the header *before* decoding the pixels, so a decompression bomb is refused unread. Grey and
    colour uploads are converted to the model's channels (grey = ITU-R 601 luma), 16-bit grey scaled to
    8 bits; transparency is dropped. Animated images give their first frame.
    """
    c, h, w = image_shape
    if not data:
        raise RequestError(400, "the request body is empty; send the image file's bytes as the body")
    img = _open_checked(data, w, h)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        raise RequestError(415, "floating-point images are not supported; send an 8-bit PNG or JPEG")
    arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C")).unsqueeze(0)  # a writable copy


def _open_checked(data: bytes, w: int, h: int) -> Image.Image:
    """The upload opened and loaded, once its header says it is w x h pixels; each failure a RequestError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            if img.size != (w, h):
                raise RequestError(422, f"the image is {img.size[0]}x{img.size[1]} pixels, but this model takes "
                                        f"{w}x{h} (width x height); resize it first (the page's 'resize to fit' "
                                        "does it)")
            img.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own check, on opening
        raise RequestError(422, f"the image is far larger than this model's {w}x{h} pixels (width x height); "
                                "resize it first") from None
    except UnidentifiedImageError:
        raise RequestError(415, f"the body is not an image this server reads ({', '.join(UPLOAD_FORMATS)}); "
                                "send a PNG or JPEG file") from None
    except (OSError, ValueError, SyntaxError, EOFError):  # Pillow's word for truncated or corrupt files
        raise RequestError(400, "the image file is truncated or corrupt; send a complete PNG or JPEG file") from None
    return img
