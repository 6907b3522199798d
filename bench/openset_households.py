#!/usr/bin/env python3
"""Open-set threshold rules compared on one set of embeddings: the calibrated rule face-edge uses
(crates/core/src/gallery.rs), the previous rule (closest enrolled pair + 0.1) and per-person thresholds
(each person's nearest other enrolled person + 0.05 / + 0.1), on simulated look-alike households: each
household is a random LFW person and the people nearest to them (by mean embedding), 2 photos enrolled
each, probed with their other photos and with every photo of the 40 non-enrolled people most like the
household. Prints known-named, wrong-name and stranger-accepted rates per rule and household size.

    face-edge embed --model mobilefacenet --largest --jsonl ../shared/data/lfw > lfw.jsonl
    python3 bench/openset_households.py lfw.jsonl

Needs numpy. The rule here mirrors the Rust code (normal tail, prior blended in with 50 pairs' weight).
"""
import argparse
import json
from collections import defaultdict
from statistics import NormalDist

import numpy as np

STRANGER_RATE = 0.008
PRIOR_PAIRS = 50.0
CEILING = 0.8
MARGIN = 0.05


def load(path):
    people = defaultdict(list)
    rows = [json.loads(line) for line in open(path)]
    for r in sorted(rows, key=lambda r: r["path"]):
        if r.get("faces"):
            people[r["path"].split("/")[-2]].append(np.array(r["faces"][0]["embedding"]))
    return people


def cross_pairs(enrolled):
    ids = list(enrolled)
    out = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            out.extend((np.stack(enrolled[a]) @ np.stack(enrolled[b]).T).ravel())
    return np.array(out)


def calibrated(floor, mean0, sd0):
    def rule(enrolled):
        c = cross_pairs(enrolled)
        n = len(c)
        if n:
            mean = (n * c.mean() + PRIOR_PAIRS * mean0) / (n + PRIOR_PAIRS)
            var = (n * (c.var() + (c.mean() - mean) ** 2) + PRIOR_PAIRS * (sd0**2 + (mean0 - mean) ** 2)) / (n + PRIOR_PAIRS)
        else:
            mean, var = mean0, sd0**2
        m = sum(len(v) for v in enrolled.values())
        z = NormalDist().inv_cdf(1 - STRANGER_RATE / m)
        return min(max(floor, mean + z * np.sqrt(var)), max(CEILING, floor))
    return rule


def previous(floor):
    def rule(enrolled):
        c = cross_pairs(enrolled)
        return floor if len(c) == 0 else min(max(floor, c.max() + 0.1), max(CEILING, floor))
    return rule


def per_person(floor, headroom):
    def rule(enrolled):
        out = []
        for p in enrolled:
            a = np.stack(enrolled[p])
            nearest = max((a @ np.stack(enrolled[q]).T).max() for q in enrolled if q != p)
            out.append(min(max(floor, nearest + headroom), CEILING))
        return out
    return rule


def evaluate(enrolled, probes, rule):
    ids = list(enrolled)
    gallery = [np.stack(enrolled[i]) for i in ids]
    thresholds = np.broadcast_to(np.asarray(rule(enrolled), dtype=float), (len(ids),))
    known = right = wrong = strangers = accepted = 0
    for x, truth in probes:
        s = np.array([(g @ x).max() for g in gallery])
        best = int(s.argmax())
        second = np.partition(s, -2)[-2] if len(s) > 1 else -1.0
        named = ids[best] if s[best] >= thresholds[best] and s[best] - second >= MARGIN else None
        if truth is None:
            strangers += 1
            accepted += named is not None
        else:
            known += 1
            right += named == truth
            wrong += named is not None and named != truth
    return right, wrong, known, accepted, strangers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jsonl")
    ap.add_argument("--households", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threshold", type=float, default=0.264, help="the model's threshold")
    ap.add_argument("--impostor-mean", type=float, default=0.014)
    ap.add_argument("--impostor-sd", type=float, default=0.102)
    args = ap.parse_args()
    people = load(args.jsonl)
    names = sorted(people)
    centre = {p: np.mean(people[p], 0) / np.linalg.norm(np.mean(people[p], 0)) for p in names}
    eligible = [p for p in names if len(people[p]) >= 3]
    rules = {
        "calibrated": calibrated(args.threshold, args.impostor_mean, args.impostor_sd),
        "previous": previous(args.threshold),
        "per-person+0.05": per_person(args.threshold, 0.05),
        "per-person+0.1": per_person(args.threshold, 0.1),
    }
    for size in (3, 5, 9):
        rng = np.random.default_rng(args.seed)
        households = []
        for _ in range(args.households):
            seed = eligible[rng.integers(len(eligible))]
            households.append(sorted(eligible, key=lambda q: -centre[q] @ centre[seed])[:size])
        for label, rule in rules.items():
            totals = np.zeros(5)
            for house in households:
                enrolled = {p: people[p][:2] for p in house}
                probes = [(e, p) for p in house for e in people[p][2:]]
                middle = np.mean([centre[p] for p in house], 0)
                others = sorted((q for q in names if q not in house), key=lambda q: -centre[q] @ middle)[:40]
                probes += [(e, None) for q in others for e in people[q]]
                totals += evaluate(enrolled, probes, rule)
            right, wrong, known, accepted, strangers = totals
            print(f"households of {size} look-alikes  {label:16s} known named {100 * right / known:5.1f} %  "
                  f"wrong {100 * wrong / known:4.2f} %  strangers accepted {100 * accepted / strangers:5.2f} %")


if __name__ == "__main__":
    main()
