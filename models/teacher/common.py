"""What the teacher tools share with faceflow's Rust code: the split (src/model/dataset.rs) and
the age groups scored (src/model/mod.rs)."""

MASK64 = (1 << 64) - 1
# Upper ends of the 3, 5 and 10 age groups (1-26/27-52/53-80, ..., eight-year bins 1-8 ... 73-80).
GROUPS = {3: [26, 52], 5: [11, 23, 39, 55], 10: [8, 16, 24, 32, 40, 48, 56, 64, 72]}


def mix64(z):
    """SplitMix64's finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def split_unit(content_hash, seed):
    """src/model/dataset.rs split_unit: the image's place in [0, 1) that decides its part of the split."""
    key = mix64(content_hash ^ mix64((seed + 0x9E3779B97F4A7C15) & MASK64))
    return (key >> 11) / float(1 << 53)
