"""Weight files the metrics read from disk (nothing downloads at run time): where each comes from,
its size and checksum, and where each checksum was published. README "Staged weight files" lists the
same table.

A checksum is only as good as its source, so every entry says where its numbers were published.
Where no public source gives the full sha256 (torchvision publishes an 8-digit prefix; NVIDIA
publishes nothing for vgg16.pt), the check does what it can and the gap is stated here and in the
README.
"""

from dataclasses import dataclass
from pathlib import Path

from bcmcore.config import UserError
from bcmcore.util import sha256_file


@dataclass(frozen=True)
class StagedFile:
    name: str  # file name (a path to a folder means this name inside it)
    url: str  # where to download it, on a machine with internet
    what: str  # what it is, in the error message
    key: str  # the spec / config key that points at it
    sha256: str = ""  # full digest; empty when no public source publishes one
    sha256_prefix: str = ""  # leading hex digits where only those are published (torchvision)
    size_bytes: int = 0  # exact size where published or derived from a published digest
    size_mib: float = 0.0  # size in MiB rounded to 3 decimals (torchvision's `_file_size`)
    checksum_source: str = ""  # where the numbers above were published

    @property
    def verified(self):
        return bool(self.sha256)


INCEPTION = StagedFile(
    name="inception-2015-12-05.pt",
    url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    what="clean-fid Inception file (StyleGAN2-ADA Inception-v3 TorchScript: FID, IS, KID)",
    key="features.inception_path",
    sha256="f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
    size_bytes=95_607_719,
    checksum_source="crowsonkb/k-diffusion, k_diffusion/evaluation.py (the digest its download "
    "checks)",
)
VGG16 = StagedFile(
    name="vgg16.pt",
    url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt",
    what="StyleGAN2-ADA VGG16 TorchScript (improved precision/recall, iGCT's pr50k3)",
    key="features.vgg16_path",
    checksum_source="none published (NVIDIA gives no digest or size): UNVERIFIED, see README",
)
ALEXNET = StagedFile(
    name="alexnet-owt-7be5be79.pth",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    what="torchvision AlexNet ImageNet weights (the LPIPS-AlexNet backbone)",
    key="features.lpips_path",
    sha256_prefix="7be5be79",
    size_mib=233.087,
    checksum_source="torchvision 0.29 AlexNet_Weights.IMAGENET1K_V1: the sha256 prefix in the file "
    "name "
    "(what torch.hub's check_hash verifies) and meta _file_size; the full sha256 is not published",
)
LPIPS_ALEX_LIN = StagedFile(
    name="alex.pth",
    url="pip install lpips==0.1.4 (lpips/weights/v0.1/alex.pth ships in the wheel)",
    what="LPIPS v0.1 linear heads for AlexNet",
    key="the lpips package",
    sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    size_bytes=6009,
    checksum_source="the lpips-0.1.4 wheel's RECORD (the wheel itself is checked by pip against "
    "PyPI's sha256)",
)


def resolve(path, entry):
    """A file path, or a folder holding `entry.name`."""
    path = Path(path).expanduser()
    return path / entry.name if path.is_dir() or path.suffix == "" else path


def check(path, entry):
    """The staged file at `path` (the file or its folder), verified by what its source publishes.

    Missing or wrong: one UserError naming the path, what the file is and where to get it.
    """
    file = resolve(path, entry)
    hint = (
        f"download {entry.url} on a machine with internet and copy it to {file} "
        f"(or set {entry.key})"
    )
    if not file.is_file():
        raise UserError(f"{entry.what}: {file} is missing; {hint}")
    size = file.stat().st_size
    bad_size = (entry.size_bytes and size != entry.size_bytes) or (
        entry.size_mib and round(size / 2**20, 3) != entry.size_mib
    )
    digest = sha256_file(file) if (entry.sha256 or entry.sha256_prefix) and not bad_size else ""
    if (
        bad_size
        or (entry.sha256 and digest != entry.sha256)
        or (entry.sha256_prefix and not digest.startswith(entry.sha256_prefix))
    ):
        want = entry.sha256 or f"{entry.sha256_prefix}..."
        size_text = f"{entry.size_bytes} bytes" if entry.size_bytes else f"{entry.size_mib} MiB"
        raise UserError(
            f"{file}: not the expected {entry.what} (expected {size_text}, sha256 {want}, as "
            f"published by {entry.checksum_source}; got {size} bytes); {hint}"
        )
    return file
