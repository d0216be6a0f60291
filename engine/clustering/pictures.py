"""The files of a cluster folder that people open: the face crops, a folder per cluster, a contact
sheet per cluster, one overview picture and a CSV.

    faces/000042.jpg                 every face's aligned crop, written once when the face is added
    clusters/0003_Alice/000042.jpg   per cluster: links to its crops (copies where links cannot be made)
    clusters/unsorted/...            faces that joined nobody
    sheets/0003_Alice.jpg            per cluster: its faces in a grid, the representative first
    overview.jpg                     every cluster's representative, largest cluster first
    clusters.csv                     a row per face: id, cluster, name, photo, box, score, quality

clusters/ and sheets/ are rebuilt as a whole after each change (in a temporary folder, then swapped
in), so a renamed or merged cluster never leaves a stale folder behind.
"""
import csv
import io
import os
import re
import shutil

import cv2
import numpy as np

from engine.evaluation.clustering import UNSORTED
from foundation.atomic_io import atomic_write_bytes, atomic_write_text, make_temp_dir, move_dir_into_place

FACES_DIR, CLUSTERS_DIR, SHEETS_DIR = "faces", "clusters", "sheets"
OVERVIEW_FILE, CSV_FILE = "overview.jpg", "clusters.csv"
TILE, CAPTION = 112, 18
SHEET_COLUMNS, SHEET_FACES = 8, 64
OVERVIEW_COLUMNS, OVERVIEW_CLUSTERS = 12, 480
CSV_COLUMNS = ("face_id", "cluster", "name", "source", "x1", "y1", "x2", "y2", "det_score", "quality")


def face_file(folder, face_id):
    return os.path.join(folder, FACES_DIR, f"{int(face_id):06d}.jpg")


def save_crop(folder, face_id, crop):
    """Write one face's aligned crop (BGR) as faces/<id>.jpg."""
    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise OSError(f"could not encode the crop of face {face_id}")
    os.makedirs(os.path.join(folder, FACES_DIR), exist_ok=True)
    atomic_write_bytes(face_file(folder, face_id), data.tobytes())


def cluster_folder_name(cluster_id, name):
    """'0003' or '0003_Alice_Smith': the id keeps it unique, the name (file-safe) makes it readable."""
    if cluster_id == UNSORTED:
        return "unsorted"
    safe = re.sub(r"[^\w.-]+", "_", name or "").strip("._")[:60]
    return f"{cluster_id:04d}_{safe}" if safe else f"{cluster_id:04d}"


def write_views(folder, book):
    """clusters.csv, clusters/, sheets/ and overview.jpg of `book` (an engine.clustering.book.ClusterBook)."""
    for name in os.listdir(folder):  # the half-built views of a run that was killed: ours to remove
        if re.fullmatch(rf"\.({CLUSTERS_DIR}|{SHEETS_DIR})\..+\.tmp(\.old)?", name):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    _write_csv(folder, book)
    groups = [(cid, book.names.get(cid), _ordered(book, cid, members)) for cid, members in book.groups().items()]
    unsorted = [f["id"] for f in book.faces if f["cluster"] == UNSORTED]
    tmp = make_temp_dir(os.path.join(folder, CLUSTERS_DIR))
    try:
        for cid, name, members in groups + [(UNSORTED, None, unsorted)]:
            if members:
                _link_faces(folder, os.path.join(tmp, cluster_folder_name(cid, name)), members)
        move_dir_into_place(tmp, os.path.join(folder, CLUSTERS_DIR))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp = make_temp_dir(os.path.join(folder, SHEETS_DIR))
    try:
        for cid, name, members in groups:
            title = f"{book.label_of(cid)}: {len(members)} face(s)"
            cv2.imwrite(os.path.join(tmp, cluster_folder_name(cid, name) + ".jpg"),
                        contact_sheet(folder, members[:SHEET_FACES], title, len(members)))
        move_dir_into_place(tmp, os.path.join(folder, SHEETS_DIR))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    picture = overview(folder, book, groups, len(unsorted))
    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 88])
    if ok:
        atomic_write_bytes(os.path.join(folder, OVERVIEW_FILE), data.tobytes())


def _ordered(book, cluster_id, members):
    """A cluster's face ids (`members`): the representative first, then by detection score."""
    first = book.representative(cluster_id, members)
    rest = sorted((f for f in members if f != first), key=lambda f: -book.faces[f]["det_score"])
    return [first] + rest


def _link_faces(folder, target, members):
    os.makedirs(target, exist_ok=True)
    for face_id in members:
        source = face_file(folder, face_id)
        if not os.path.isfile(source):
            continue  # its crop was not kept (a face added through the API without a folder)
        link = os.path.join(target, os.path.basename(source))
        try:
            os.link(source, link)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(source, link)


def _tile(folder, face_id, caption):
    img = cv2.imread(face_file(folder, face_id))
    tile = np.full((TILE + CAPTION, TILE, 3), 255, np.uint8)
    if img is not None:
        tile[:TILE] = cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA)
    _text(tile, caption, (3, TILE + 13), 0.38)
    return tile


def _text(img, text, origin, scale, colour=(40, 40, 40)):
    # OpenCV's Hershey fonts draw ASCII only: other characters show as '?'
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    cv2.putText(img, ascii_text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _grid(tiles, columns, title):
    rows = max(1, -(-len(tiles) // columns))
    height, width = TILE + CAPTION, TILE
    sheet = np.full((30 + rows * height, max(columns * width, 320), 3), 255, np.uint8)
    _text(sheet, title, (6, 20), 0.55, (0, 0, 0))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[30 + r * height:30 + (r + 1) * height, c * width:(c + 1) * width] = tile
    return sheet


def contact_sheet(folder, members, title, total):
    """A cluster's faces in a grid, captioned with their face ids."""
    tiles = [_tile(folder, face_id, f"#{face_id}") for face_id in members]
    if total > len(members):
        title += f" (first {len(members)} shown)"
    return _grid(tiles, SHEET_COLUMNS, title)


def overview(folder, book, groups, unsorted):
    """Every cluster's representative face, largest cluster first, captioned 'id name (size)'."""
    shown = groups[:OVERVIEW_CLUSTERS]
    tiles = [_tile(folder, members[0], f"{cid} {name or ''} ({len(members)})".replace("  ", " "))
             for cid, name, members in shown]
    title = f"{len(groups)} cluster(s), {len(book.faces)} face(s), {unsorted} unsorted"
    if len(groups) > len(shown):
        title += f"; the {len(shown)} largest shown"
    return _grid(tiles, OVERVIEW_COLUMNS, title)


def _write_csv(folder, book):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for face in book.faces:
        cid = face["cluster"]
        x1, y1, x2, y2 = face["box"]
        writer.writerow([face["id"], cid if cid != UNSORTED else "unsorted", book.names.get(cid, ""), face["source"],
                         round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1), round(face["det_score"], 4),
                         face["quality"]])
    atomic_write_text(os.path.join(folder, CSV_FILE), out.getvalue())
