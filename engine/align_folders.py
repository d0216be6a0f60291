"""Import raw photos, one folder per person, as aligned 112x112 faces in the train/val layout.

    python -m engine.align_folders SRC DST --val-identities 10 [--pairs N --seed 0 --overwrite]
                                   [--det-threshold 0.6 --min-size 24 --threads 2]

datasets/import_folders.py with a detector in front: every photo goes through YuNet
(models.face_detector.MainFaceCropper); its main face (the largest box nearest the centre; models.alignment.main_face)
is aligned on its 5 landmarks to the 112x112 template and written as PNG. Photos with
no face are left out, photos with several faces keep the main one; both are counted, the first
few printed, and all listed in DST/convert_report.txt. Split, pairs and the other options are the
importer's. It lives in engine because datasets/ may not import models/.
"""
import sys

from datasets.import_folders import build_parser, run_import
from datasets.transforms import ImageReadError, read_image
from foundation.runtime import num_threads_from, set_threads
from models.face_detector import MainFaceCropper


def aligned_face_reader(cropper):
    """convert(path) -> (aligned main face or None, note) for datasets.import_folders."""
    def convert(path):
        try:
            img = read_image(path)
        except ImageReadError as e:
            return None, f"unreadable: {e}"
        chip, faces = cropper.crop(img)
        if chip is None:
            return None, "no face"
        return chip, (f"{len(faces)} faces, the main one kept" if len(faces) > 1 else "")
    return convert


def main(argv=None):
    parser = build_parser("python -m engine.align_folders",
                          "Raw photos, one folder per person -> aligned 112x112 faces in train/ and val/, split by identity.")
    parser.add_argument("--det-threshold", type=float, default=0.6, help="YuNet score threshold (default 0.6)")
    parser.add_argument("--min-size", type=int, default=24, help="smallest face side in pixels (default 24)")
    parser.add_argument("--threads", type=int, default=2, help="OpenCV threads; 0 = every core (default 2)")
    args = parser.parse_args(argv)
    set_threads(num_threads_from(args.threads))
    cropper = MainFaceCropper(type="yunet", threshold=args.det_threshold, min_size=args.min_size)
    return run_import(args, convert=aligned_face_reader(cropper))


if __name__ == "__main__":
    sys.exit(main())
