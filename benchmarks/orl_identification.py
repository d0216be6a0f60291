"""ORL (AT&T) closed-set identification: rank-1 / rank-5 accuracy with one enrolled image per person.

Protocol: the chosen people (default: all 40, s1..s40; pass the ones the model was NOT trained on,
e.g. --people s31-s40) each have 10 images 1.pgm..10.pgm. For enrolment choice e = 1..10, image e
of every person goes into a Flat gallery index (one face per person) and the other 9 images of
every person are queries; a query is correct at rank 1 when its top gallery label is its person.
Reported: mean and std over the 10 enrolment choices (every image is enrolled once), rank-1 and
rank-5 (rank-5 only means something with more than 5 people), and the mean cosine of the top-1
match for correct and wrong answers. Faces: --det none embeds the whole image (ORL images are
face crops, resized to 112x112 without keeping the aspect, as in training); --det yunet runs the
pipeline's YuNet detector and alignment, falling back to the whole image when it finds no face
(the count is printed).

    python benchmarks/orl_identification.py --model-dir output/best_model/inference --people s31-s40
    # the people a model did NOT train on, read from the dataset made by datasets/import_folders.py:
    python benchmarks/orl_identification.py --model-dir output/best_model/inference --heldout-from dataset/orl
"""
import argparse
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

DEFAULT_ORL = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "orl_faces"))


def parse_people(spec, orl_dir):
    """'s31-s40' / 's1,s2,s5' / 'all' / a file with one folder name per line -> sorted folder names."""
    available = sorted((d for d in os.listdir(orl_dir) if os.path.isdir(os.path.join(orl_dir, d))),
                       key=lambda d: int(d[1:]) if d[1:].isdigit() else 10 ** 6)
    if spec in (None, "", "all"):
        return available
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            names = [line.split()[0] for line in f if line.strip() and not line.startswith("#")]
    else:
        names = []
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                names += [f"s{i}" for i in range(int(a.lstrip("s")), int(b.lstrip("s")) + 1)]
            elif part:
                names.append(part)
    missing = [n for n in names if n not in available]
    if missing:
        raise SystemExit(f"people not in {orl_dir}: {', '.join(missing)}")
    return names


def identification(feats, person, image, ranks=(1, 5)):
    """Per enrolment choice: rank-k accuracies and top-1 cosines. feats [N, D] normalised."""
    from engine.gallery.faiss_index import GalleryIndex

    rows = []
    people = sorted(set(person))
    for e in sorted(set(image)):
        enrolled = [i for i in range(len(person)) if image[i] == e]
        queries = [i for i in range(len(person)) if image[i] != e]
        index = GalleryIndex(feats.shape[1], "orl")
        index.add(feats[enrolled], [person[i] for i in enrolled])
        labels, scores, _ = index.search(feats[queries], top_k=max(ranks))
        truth = [person[i] for i in queries]
        row = {"enrolled_image": e, "queries": len(queries), "people": len(people)}
        for k in ranks:
            row[f"rank{k}"] = float(np.mean([t in lab[:k] for t, lab in zip(truth, labels)]))
        top1_ok = np.array([lab[0] == t for t, lab in zip(truth, labels)])
        top1_score = np.array([s[0] for s in scores])
        row["cos_correct"] = float(top1_score[top1_ok].mean()) if top1_ok.any() else None
        row["cos_wrong"] = float(top1_score[~top1_ok].mean()) if (~top1_ok).any() else None
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="exported face feature model (inference.json + .pdiparams)")
    ap.add_argument("--orl-dir", default=DEFAULT_ORL)
    ap.add_argument("--people", default="all", help="e.g. s31-s40, s1,s2,s3, all, or a file of names")
    ap.add_argument("--heldout-from", default=None,
                    help="dataset folder from datasets/import_folders.py: use the ORL people NOT listed in its "
                         "train/identities.txt (the ones the model never saw)")
    ap.add_argument("--det", choices=("none", "yunet"), default="none")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.orl_dir):
        raise SystemExit(f"ORL folder {args.orl_dir} does not exist (--orl-dir)")

    from datasets.transforms import read_image
    from engine import create_pipeline

    people = parse_people(args.people, args.orl_dir)
    if args.heldout_from:
        ids_file = os.path.join(args.heldout_from, "train", "identities.txt")
        if not os.path.isfile(ids_file):
            raise SystemExit(f"{ids_file} does not exist: --heldout-from needs a dataset made by datasets/import_folders.py")
        with open(ids_file, encoding="utf-8") as f:
            trained = {line.split()[1] for line in f if line.strip() and not line.startswith("#") and len(line.split()) > 1}
        people = [p for p in people if p not in trained]
        if len(people) < 2:
            raise SystemExit(f"fewer than 2 ORL people are held out by {ids_file}")
    pipe = create_pipeline(config={"SubModules.Recognition.model_dir": args.model_dir,
                                   "SubModules.Detection.enable": args.det == "yunet", "det_threshold": 0.3,
                                   "Global.num_threads": args.threads,
                                   "SubModules.Recognition.batch_size": args.batch_size})
    paths, person, image = [], [], []
    for p in people:
        for f in sorted(os.listdir(os.path.join(args.orl_dir, p)), key=lambda n: int(os.path.splitext(n)[0])
                        if os.path.splitext(n)[0].isdigit() else 0):
            if f.lower().endswith(".pgm"):
                paths.append(os.path.join(args.orl_dir, p, f))
                person.append(p)
                image.append(os.path.splitext(f)[0])
    t0 = time.perf_counter()
    crops, fallbacks = [], 0
    for path in paths:
        img = read_image(path)
        found = pipe.faces_of(img) if args.det == "yunet" else []
        if args.det == "yunet" and not found:
            fallbacks += 1
        crops.append(max(found, key=lambda fc: fc[0].score)[1] if found else img)
    feats = pipe.embed(crops)
    seconds = time.perf_counter() - t0
    rows = identification(feats, person, image)

    def stat(key):
        vals = np.array([r[key] for r in rows if r[key] is not None], dtype=float)
        return float(vals.mean()), float(vals.std())

    summary = {
        "protocol": "ORL closed-set identification, 1 enrolled image per person, the other 9 as queries, "
                    "mean/std over the 10 enrolment choices",
        "model_dir": os.path.abspath(args.model_dir), "model_name": pipe.model.model_name,
        "people": len(people), "people_list": people, "images": len(paths), "det": args.det,
        "det_fallbacks": fallbacks if args.det == "yunet" else None,
        "rank1_mean": stat("rank1")[0], "rank1_std": stat("rank1")[1],
        "rank5_mean": stat("rank5")[0], "rank5_std": stat("rank5")[1],
        "top1_cos_correct": stat("cos_correct")[0] if any(r["cos_correct"] is not None for r in rows) else None,
        "top1_cos_wrong": stat("cos_wrong")[0] if any(r["cos_wrong"] is not None for r in rows) else None,
        "embed_seconds": seconds, "per_enrolment": rows,
    }
    print(f"ORL identification: {len(people)} people, {len(paths)} images, det={args.det}"
          + (f" (YuNet found no face in {fallbacks}: whole image used)" if args.det == "yunet" else "")
          + f", model {pipe.model.model_name} from {args.model_dir}")
    print(f"rank-1 {100 * summary['rank1_mean']:.2f} % +- {100 * summary['rank1_std']:.2f}, "
          f"rank-5 {100 * summary['rank5_mean']:.2f} % +- {100 * summary['rank5_std']:.2f} "
          f"(mean +- std over 10 enrolment choices, {rows[0]['queries']} queries each; chance "
          f"{100 / len(people):.1f} %)")
    if args.json:
        from foundation.atomic_io import atomic_write_json

        atomic_write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
