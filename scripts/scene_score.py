#!/usr/bin/env python3
"""Scores a faceflow run of a synthetic scene kept by the scene tests (SCENE_KEEP=CLIP writes
CLIP and CLIP.truth.json), as tests/integration/scene.rs scores it: faces found, id consistency,
id switches, ids per person. For trying tracker changes without re-rendering the scene:

    SCENE_KEEP=/tmp/hard.mp4 SCENE_DETECT_EVERY=auto cargo test --release --features train \
        --test integration -- scene::moving --ignored --nocapture
    target/release/faceflow run --input /tmp/hard.mp4 --json /tmp/hard.jsonl --detect-every auto
    scripts/scene_score.py /tmp/hard.mp4.truth.json /tmp/hard.jsonl [--runs] [--optimal]

--optimal matches faces to people by the largest summed overlap (CLEAR MOT's Hungarian
matching) instead of the tests' greedy best-overlap-first, which credits a face to the wrong
person where two pasted faces overlap heavily.
"""

import json
import sys
from collections import Counter, defaultdict


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# Where MTCNN boxes a pasted UTKFace chip's face, as fractions of its square (as
# tests/integration/scene.rs's FACE_IN_SQUARE).
FACE_IN_SQUARE = (0.09, -0.08, 0.93, 0.97)


def face_box(t):
    """The face box expected for the pasted square t."""
    w, h = t[2] - t[0], t[3] - t[1]
    l, u, r, d = FACE_IN_SQUARE
    return [t[0] + l * w, t[1] + u * h, t[0] + r * w, t[1] + d * h]


def best_pairs(pairs):
    """The pairs (overlap, detection, person), one per detection and per person, of the largest
    summed overlap (what CLEAR MOT's Hungarian matching gives); a search over the few
    detections that overlap one another's people."""
    by_d = defaultdict(list)
    for o, d, p in pairs:
        by_d[d].append((o, p))
    ds = sorted(by_d)
    best = (0.0, [])

    def search(k, taken, total, chosen):
        nonlocal best
        if k == len(ds):
            if total > best[0]:
                best = (total, list(chosen))
            return
        d = ds[k]
        for o, p in by_d[d]:
            if p not in taken:
                taken.add(p)
                chosen.append((o, d, p))
                search(k + 1, taken, total + o, chosen)
                chosen.pop()
                taken.discard(p)
        search(k + 1, taken, total, chosen)

    search(0, set(), 0.0, [])
    return best[1]


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: scene_score.py TRUTH.json RUN.jsonl [--runs] [--optimal]")
    truth = json.load(open(sys.argv[1]))
    records = [json.loads(line) for line in open(sys.argv[2])]
    per_person = defaultdict(list)
    expected = 0
    for r in records:
        if "faces" not in r or r["frame"] >= len(truth):
            continue
        f = r["frame"]
        visible = {int(p): b for p, b in truth[f].items()}
        expected += len(visible)
        pairs = []
        for d, face in enumerate(r["faces"]):
            for p, t in visible.items():
                o = iou(face["bbox"], face_box(t))
                if o > 0.1:
                    pairs.append((o, d, p))
        if "--optimal" in sys.argv:
            chosen = best_pairs(pairs)
        else:
            pairs.sort(key=lambda x: -x[0])
            chosen, taken_d, taken_p = [], set(), set()
            for o, d, p in pairs:
                if d in taken_d or p in taken_p:
                    continue
                taken_d.add(d)
                taken_p.add(p)
                chosen.append((o, d, p))
        for _, d, p in sorted(chosen, key=lambda x: x[1]):
            face = r["faces"][d]
            per_person[p].append((f, face["track_id"], face.get("confirmed")))
    matched = on_main = switches = ids = 0
    for p, seen in sorted(per_person.items()):
        counts = Counter(i for _, i, _ in seen)
        matched += len(seen)
        on_main += counts.most_common(1)[0][1]
        ids += len(counts)
        switches += sum(1 for a, b in zip(seen, seen[1:]) if a[1] != b[1])
        if "--runs" in sys.argv:
            runs = []
            for f, i, c in seen:
                if runs and runs[-1][2] == i:
                    runs[-1][1] = f
                else:
                    runs.append([f, f, i, c])
            print(f"person {p}: {[tuple(x[:3]) + (('' if x[3] else '?'),) for x in runs]}")
    people = len(per_person)
    # Ids given to two or more people for 5 frames or more each (one id, two people: the
    # per-person figures above do not see it, a people count does).
    frames_of = defaultdict(Counter)
    for p, seen in per_person.items():
        for _, i, _ in seen:
            frames_of[i][p] += 1
    shared = sum(1 for c in frames_of.values() if sum(1 for n in c.values() if n >= 5) >= 2)
    print(
        f"{people} people, faces found {matched}/{expected} ({matched / max(expected, 1):.3f}), "
        f"id consistency {on_main / max(matched, 1):.3f}, {switches} id switches, "
        f"{ids / max(people, 1):.2f} ids per person, {shared} ids shared by people"
    )


if __name__ == "__main__":
    main()
