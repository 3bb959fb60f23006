"""SynthAVS scenes: reference captions and the plan of every clip (objects, states, who sounds when)."""
from __future__ import annotations

import zlib
from collections import Counter

import numpy as np

from pipeline.synthavs.config import CATEGORIES, P_SOUND, USUAL, SynthConfig

# ----------------------------------------------------------------------------- captions

_ACTIVE = {
    "guitar": ["someone holding a guitar", "a guitar held upright by a musician"],
    "piano": ["someone with hands on a piano", "a piano with two hands on the keys"],
    "violin": ["someone holding a violin with a bow", "a violin with a bow across it"],
    "trumpet": ["someone holding a trumpet", "a trumpet held in a hand"],
    "flute": ["someone holding a flute", "a flute held in both hands"],
    "drums": ["a drum with two sticks raised", "a drum with drumsticks above it"],
    "saxophone": ["someone holding a saxophone", "a saxophone held upright"],
    "cello": ["a cello with a bow across it", "someone holding a cello and a bow"],
    "man": ["a man with his mouth open and a hand raised", "a man standing with his mouth open"],
    "woman": ["a woman with her mouth open and a hand raised", "a woman standing with her mouth open"],
    "bell": ["a bell hanging upright with motion marks", "a shaking bell"],
    "phone": ["a phone with a lit screen", "a phone with its screen on"],
}
_IDLE = {
    "man": ["a man lying on the floor", "a man lying down with his mouth closed"],
    "woman": ["a woman lying on the floor", "a woman lying down with her mouth closed"],
    "phone": ["a phone with a dark screen lying on its side", "a switched-off phone lying on its side"],
}
_IDLE_DEFAULT = ["a {c} lying on its side", "a grey {c} lying on the floor"]
_TEMPLATES = {
    1: ["{0}.", "A room with {0}.", "There is {0} in the room."],
    2: ["{0} next to {1}.", "A room with {0} and {1}.", "{0}, and {1} nearby."],
    3: ["{0}, {1} and {2}.", "A room with {0}, {1} and {2}.", "{0} next to {1} and {2}."],
    4: ["{0}, {1}, {2} and {3}.", "A room with {0}, {1}, {2} and {3}.", "{0} next to {1}, {2} and {3}."],
}


def _phrase(category: str, active: bool, variant: int) -> str:
    options = _ACTIVE[category] if active else _IDLE.get(category, [s.format(c=category) for s in _IDLE_DEFAULT])
    return options[variant % len(options)]


def caption(objects: dict[str, str]) -> str:
    """Reference caption of a scene: a pure function of its (category -> state) map.

    Mentions every visible object and how it looks, never whether it sounds.

    >>> caption({"piano": "idle", "man": "active"})
    'A room with a piano lying on its side and a man with his mouth open and a hand raised.'
    """
    cats = sorted(objects, key=CATEGORIES.index)
    key = ",".join(f"{c}:{objects[c]}" for c in cats)
    h = zlib.crc32(key.encode())  # deterministic phrasing choice, stable across runs and machines
    parts = [_phrase(c, objects[c] == "active", (h >> (4 + i)) & 1) for i, c in enumerate(cats)]
    text = _TEMPLATES[len(cats)][h % len(_TEMPLATES[len(cats)])].format(*parts)
    return text[0].upper() + text[1:]


# ----------------------------------------------------------------------------- scene planning

def _scene_pool(cfg: SynthConfig, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Distinct object sets; the first 12 are seeded with each category once so all appear."""
    pool: set[tuple[str, ...]] = set()
    out = []
    i = 0
    while len(out) < cfg.scene_pool:
        n = int(rng.choice(len(cfg.objects_per_scene), p=cfg.objects_per_scene)) + 1
        first = CATEGORIES[i % len(CATEGORIES)]
        others = [c for c in CATEGORIES if c != first]
        chosen = [first, *rng.choice(others, n - 1, replace=False).tolist()]
        key = tuple(sorted(chosen, key=CATEGORIES.index))
        i += 1
        if key not in pool:
            pool.add(key)
            out.append(key)
    return out


def _eligible(pool, subset: str, biased: bool):
    """Object sets a clip of ``subset`` may use. In the biased splits a lone rare sounder would
    have to sound and two usual sounders would compete for one s4 source, so both are avoided;
    an ms3 scene there keeps at least one object silent (3+ objects)."""
    if not biased:
        return [s for s in pool if subset != "ms3" or len(s) >= 2]
    if subset == "ms3":
        return [s for s in pool if len(s) >= 3]
    return [s for s in pool if (len(s) > 1 or P_SOUND[s[0]] >= 0.5) and sum(c in USUAL for c in s) <= 1]


def _ms3_sizes(n_objects: int, biased: bool) -> list[int]:
    """Possible numbers of ms3 sources (drawn uniformly)."""
    return list(range(2, min(3, n_objects - 1 if biased else n_objects) + 1))


def _p_selected(weights: np.ndarray, k: int) -> np.ndarray:
    """P(each item is among k drawn without replacement, each draw ~ weights): exact enumeration."""
    out = np.zeros(len(weights))

    def rec(avail: list[int], prob: float, chosen: list[int]) -> None:
        if len(chosen) == k:
            out[chosen] += prob
            return
        tot = weights[avail].sum()
        for j in avail:
            rec([a for a in avail if a != j], prob * weights[j] / tot, chosen + [j])

    rec(list(range(len(weights))), 1.0, [])
    return out


def _calibrate(cfg: SynthConfig, pool, iters: int = 200) -> dict[str, float]:
    """Sounder weights w_c for the biased splits such that, in expectation over the scene pool,
    the s4/ms3 mix, the ms3 per-second on/off and silent seconds, P(sound | visible) per frame matches P_SOUND."""
    mix = {"s4": (1 - cfg.ms3_fraction, _eligible(pool, "s4", True)),
           "ms3": (cfg.ms3_fraction, _eligible(pool, "ms3", True))}
    logw = {c: 0.0 for c in CATEGORIES}
    for _ in range(iters):
        snd, vis = Counter(), Counter()
        for subset, (share, sets) in mix.items():
            for s in sets:
                w = np.array([np.exp(logw[c]) for c in s])
                if subset == "s4":
                    sel = w / w.sum()
                else:
                    sizes = _ms3_sizes(len(s), True)
                    sel = (sum(_p_selected(w, k) for k in sizes) / len(sizes) * cfg.ms3_p_source_on
                           * (1 - cfg.ms3_silent_share))  # a silent second silences every source
                for c, p in zip(s, sel):
                    snd[c] += share * p / len(sets)
                    vis[c] += share / len(sets)
        for c in CATEGORIES:
            if vis[c]:
                real = min(max(snd[c] / vis[c], 1e-4), 1 - 1e-4)
                logw[c] += 0.5 * (np.log(P_SOUND[c] / (1 - P_SOUND[c])) - np.log(real / (1 - real)))
    return {c: float(np.exp(v)) for c, v in logw.items()}


def frame_slice(subset: str, visible: list[str], sounding: list[str]) -> str:
    """The frame's slice; a frame where nothing sounds (null clip or silent ms3 second) is ``null``."""
    if subset == "null" or not sounding:
        return "null"
    if any(c in USUAL and c not in sounding for c in visible) and sounding:
        return "counter_bias"
    if any(c in USUAL for c in sounding):
        return "bias_consistent"
    return "balanced"


def plan(cfg: SynthConfig) -> list[dict]:
    """Every clip's scene (objects, states, sounding per second, off-screen source), in order."""
    rng = np.random.default_rng([cfg.seed, 0])
    pool = _scene_pool(cfg, rng)
    n_train = round(cfg.split_fractions[0] * cfg.clips)
    n_val = round(cfg.split_fractions[1] * cfg.clips)
    n_test = cfg.clips - n_train - n_val
    n_null = round(cfg.null_fraction_of_test * n_test)
    weights = _calibrate(cfg, pool)
    clips = []
    split_of = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for idx, split in enumerate(split_of):
        k_in_split = idx - (0 if split == "train" else n_train if split == "val" else n_train + n_val)
        if split == "test" and k_in_split < n_null:
            subset = "null"
        else:
            subset = "ms3" if rng.random() < cfg.ms3_fraction else "s4"
        biased = split != "test"
        sets = _eligible(pool, subset, biased)
        scene = list(sets[int(rng.integers(len(sets)))])
        if subset == "null":
            sources: list[str] = []
        else:
            k = 1 if subset == "s4" else int(rng.choice(_ms3_sizes(len(scene), biased)))
            w = np.array([weights[c] if biased else 1.0 for c in scene])
            sources = rng.choice(scene, k, replace=False, p=w / w.sum()).tolist()
        silent: set[int] = set()
        if subset == "ms3" and biased and cfg.ms3_silent_share > 0:
            silent = {t for t in range(cfg.frames) if rng.random() < cfg.ms3_silent_share}
            if len(silent) == cfg.frames:  # a clip keeps at least one sounding second
                silent.discard(int(rng.integers(cfg.frames)))
        loud = [t for t in range(cfg.frames) if t not in silent]
        per_second = []
        for t in range(cfg.frames):
            if t in silent:
                on = []
            elif subset == "ms3":
                on = [c for c in sources if rng.random() < cfg.ms3_p_source_on] or [sources[int(rng.integers(len(sources)))]]
            else:
                on = list(sources)
            per_second.append(sorted(on, key=CATEGORIES.index))
        for c in sources:  # every ms3 source is heard at least once
            if not any(c in s for s in per_second):
                t = loud[int(rng.integers(len(loud)))]
                per_second[t] = sorted([*per_second[t], c], key=CATEGORIES.index)
        states = {c: "active" if c in sources or rng.random() >= cfg.p_idle_silent else "idle" for c in scene}
        offscreen = None
        if subset != "null" and rng.random() < cfg.p_offscreen:
            hidden = [c for c in CATEGORIES if c not in scene]
            start = int(rng.integers(0, cfg.frames - 1))
            offscreen = {"category": str(rng.choice(hidden)), "seconds": list(range(start, min(cfg.frames, start + int(rng.integers(2, 5)))))}
            offscreen["seconds"] = [t for t in offscreen["seconds"] if t not in silent]  # a silent second is room tone only
            offscreen = offscreen if offscreen["seconds"] else None
        order = rng.permutation(len(scene)).tolist()  # drawing order: later objects on top
        clips.append({
            "index": idx, "uid": f"sv{idx:05d}", "split": split, "subset": subset,
            "objects": {c: states[c] for c in sorted(scene, key=CATEGORIES.index)},
            "draw_order": [scene[i] for i in order], "sources": sorted(sources, key=CATEGORIES.index),
            "sounding": per_second, "silent_seconds": sorted(silent), "offscreen": offscreen, "caption": caption(states),
        })
    return clips

