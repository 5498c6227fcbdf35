"""ImageNet class orders: the authors' sorted-WNID labels vs the downsampled npz (map_clsloc) ones.

BCM-iCT-torch trained on the ILSVRC JPEG folders, label = rank of the WordNet id in sorted order (0
= n01440764 tench): the order of our `imagenet-folder` prep. The downsampled npz files (Chrabaszcz
et al. 2017) label by the devkit's `map_clsloc.txt` ids, 1-based (1 = n02119789 kit fox); our
`imagenet-npz` prep stores id - 1. `clsloc_permutation` gives perm with perm[npz_label] =
sorted-WNID label, so E_ours[k] = E_authors[perm[k]] makes an imported class embedding read npz
labels (npz 0 = kit fox = authors' 278).
"""

from pathlib import Path

import torch

from bcmcore.config import UserError


def clsloc_permutation(path, num_classes=1000):
    """map_clsloc.txt (`<wnid> <id> <name>` per line, ids 1..N) -> LongTensor perm [N]."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: map_clsloc.txt not found (it ships with the ILSVRC2012 devkit)")
    ids = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].isdigit() or not parts[0].startswith("n"):
            raise UserError(f"{path}:{n}: expected '<wnid> <id> <name>', got {line[:60]!r}")
        ids[int(parts[1])] = parts[0]
    if sorted(ids) != list(range(1, num_classes + 1)):
        raise UserError(f"{path}: expected class ids 1..{num_classes}, found {len(ids)} ids")
    rank = {w: i for i, w in enumerate(sorted(ids.values()))}
    return torch.tensor([rank[ids[k + 1]] for k in range(num_classes)], dtype=torch.long)
