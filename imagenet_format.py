"""Sort the ImageNet validation images into class folders: OUT/<wnid>/<file>.

Edit the paths below (or override them with flags), then run
    python imagenet_format.py
Labels come from the official devkit (ILSVRC2012_devkit_t12.tar.gz: data/meta.mat
maps ILSVRC2012_ID to wnid, data/ILSVRC2012_validation_ground_truth.txt gives
the ID of each image in file order) or from a label file with one
"<file> <wnid>" or "<file> <class index>" per line.

The output is built in a temporary folder and renamed into place, so it is
never half-written; running again rebuilds it. Any mismatch (an image
without a label, a label without an image, an unknown wnid) stops the run
before anything is written.
"""
import argparse
import io
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections import Counter

# ---- paths: edit these ----
VAL = "data/imagenet/ILSVRC2012_img_val.tar"          # the validation tar, or a folder of its JPEGs
DEVKIT = "data/imagenet/ILSVRC2012_devkit_t12.tar.gz"  # used when LABELS is None
LABELS = None                                          # or a "<file> <wnid|class index>" label file
SYNSETS = "data/imagenet/synset_words.txt"             # the 1,000 "<wnid> <words>" lines, in class-index order
OUT = "data/imagenet/val"
# ----------------------------

IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)


class FormatError(Exception):
    """Inputs that do not match each other."""


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val", default=VAL, help="validation tar or folder of JPEGs")
    p.add_argument("--devkit", default=DEVKIT, help="official devkit archive (used without --labels)")
    p.add_argument("--labels", default=LABELS, help="label file: '<file> <wnid>' or '<file> <class index>' per line")
    p.add_argument("--synsets", default=SYNSETS, help="synset_words.txt (class index -> wnid; copied into the output)")
    p.add_argument("--out", default=OUT, help="output folder")
    p.add_argument("--partial", action="store_true", help="devkit: accept ground-truth entries whose image is absent (a subset)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- labels


def read_synsets(path):
    """[(wnid, words)] in class-index order, or None if the file is absent."""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return [tuple(line.rstrip("\n").split(" ", 1)) if " " in line.strip() else (line.strip(), "") for line in f if line.strip()]


def read_devkit(path):
    """(ILSVRC2012_ID -> wnid, [(wnid, words)] sorted by wnid, ground-truth IDs in file order)."""
    import scipy.io

    if not os.path.isfile(path):
        raise FormatError(f"devkit {path} not found; set DEVKIT (or --devkit), or give a label file with --labels")
    with tarfile.open(path) as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        for name in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
            if name not in members:
                raise FormatError(f"devkit {path} has no data/{name}")
        meta = scipy.io.loadmat(io.BytesIO(tar.extractfile(members["meta.mat"]).read()), squeeze_me=True)["synsets"]
        truth = tar.extractfile(members["ILSVRC2012_validation_ground_truth.txt"]).read().decode().split()
    leaves = [s for s in meta if int(s["num_children"]) == 0]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
    synsets = sorted((str(s["WNID"]), str(s["words"])) for s in leaves)
    return wnid_of, synsets, [int(t) for t in truth]


def labels_from_devkit(images, path, partial):
    wnid_of, synsets, truth = read_devkit(path)
    labels = {}
    for name in images:
        match = IMAGE.search(name)
        if not match or int(match.group(1)) > len(truth):
            raise FormatError(f"image {name} has no label in the devkit's ground truth ({len(truth)} entries)")
        image_id = truth[int(match.group(1)) - 1]
        if image_id not in wnid_of:
            raise FormatError(f"ground truth gives {name} the class ID {image_id}, which meta.mat does not define")
        labels[name] = wnid_of[image_id]
    if len(images) < len(truth) and not partial:
        raise FormatError(f"the devkit labels {len(truth)} images but {len(images)} were found: "
                          f"a label without an image; pass --partial for a subset of the validation set")
    return labels, synsets


def labels_from_file(images, path, synsets):
    if not os.path.isfile(path):
        raise FormatError(f"label file {path} not found; set LABELS (or --labels)")
    wnids = [w for w, _ in synsets] if synsets else None
    labels = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise FormatError(f"{path}:{number}: expected '<file> <wnid or class index>', got {line.strip()!r}")
            name, label = os.path.basename(parts[0]), parts[1]
            if label.isdigit():
                if wnids is None:
                    raise FormatError(f"{path} gives class indices: the wnid list is needed to name the folders (--synsets)")
                if int(label) >= len(wnids):
                    raise FormatError(f"{path}:{number}: class index {label} is out of range (0-{len(wnids) - 1})")
                label = wnids[int(label)]
            elif wnids is not None and label not in wnids:
                raise FormatError(f"{path}:{number}: unknown wnid {label}")
            elif not re.fullmatch(r"n\d{8}", label):
                raise FormatError(f"{path}:{number}: {label!r} is neither a wnid nor a class index")
            labels[name] = label
    missing = sorted(set(images) - set(labels))
    if missing:
        raise FormatError(f"{len(missing)} images have no label in {path}, e.g. {missing[0]}")
    absent = sorted(set(labels) - set(images))
    if absent:
        raise FormatError(f"{len(absent)} labels in {path} name no image found, e.g. {absent[0]}")
    return labels


# ---------------------------------------------------------------- images


def list_images(val):
    """Image file names in the tar or folder ``val``."""
    if os.path.isdir(val):
        return sorted(f for f in os.listdir(val) if f.lower().endswith((".jpeg", ".jpg", ".png")))
    if not os.path.isfile(val):
        raise FormatError(f"validation images {val} not found; set VAL (or --val) to ILSVRC2012_img_val.tar or its folder")
    with tarfile.open(val) as tar:
        return sorted(os.path.basename(m.name) for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpeg", ".jpg", ".png")))


def write_classes(val, labels, out, synsets):
    """Writes OUT/<wnid>/<file> (and OUT/synset_words.txt) via a temporary folder."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".imagenet_format.", dir=parent)
    try:
        for wnid in set(labels.values()):
            os.makedirs(os.path.join(tmp, wnid))
        if os.path.isdir(val):
            for name, wnid in labels.items():
                shutil.copyfile(os.path.join(val, name), os.path.join(tmp, wnid, name))
        else:
            with tarfile.open(val) as tar:
                for member in tar:
                    name = os.path.basename(member.name)
                    if member.isfile() and name in labels:
                        with tar.extractfile(member) as src, open(os.path.join(tmp, labels[name], name), "wb") as dst:
                            shutil.copyfileobj(src, dst)
        if synsets:
            with open(os.path.join(tmp, "synset_words.txt"), "w") as f:
                f.writelines(f"{w} {words}\n" for w, words in synsets)
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=".imagenet_format.old.", dir=parent)
            os.replace(out, os.path.join(old, "val"))
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def main(args):
    images = list_images(args.val)
    if not images:
        raise FormatError(f"no images in {args.val}")
    synsets = read_synsets(args.synsets)
    if args.labels:
        labels = labels_from_file(images, args.labels, synsets)
    else:
        labels, devkit_synsets = labels_from_devkit(images, args.devkit, args.partial)
        synsets = synsets or devkit_synsets
    write_classes(args.val, labels, args.out, synsets)
    counts = Counter(labels.values())
    per_class = sorted(counts.values())
    print(f"{len(labels)} images in {len(counts)} classes -> {args.out}")
    print(f"images per class: min {per_class[0]}, median {per_class[len(per_class) // 2]}, max {per_class[-1]}")
    for wnid, n in sorted(counts.items()):
        print(f"  {wnid} {n}")
    return counts


if __name__ == "__main__":
    try:
        main(get_args())
    except FormatError as err:
        sys.exit(f"error: {err}")
