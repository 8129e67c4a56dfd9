import random

from deltatune.training.batching import epoch_batches, eval_batches, shard_batch, steps_per_epoch


def test_length_grouping_covers_everything_once_and_reduces_padding():
    rng = random.Random(0)
    lengths = [rng.randint(2, 120) for _ in range(1000)]
    grouped = epoch_batches(lengths, 16, seed=1, epoch=0, group_by_length=True)
    plain = epoch_batches(lengths, 16, seed=1, epoch=0, group_by_length=False)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(1000))

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # longest batch first


def test_order_is_a_function_of_seed_and_epoch():
    lengths = list(range(100))
    assert epoch_batches(lengths, 8, 1, 0) == epoch_batches(lengths, 8, 1, 0)
    assert epoch_batches(lengths, 8, 1, 0) != epoch_batches(lengths, 8, 1, 1)
    assert epoch_batches(lengths, 8, 1, 0) != epoch_batches(lengths, 8, 2, 0)


def test_shards_and_eval_batches():
    assert shard_batch([0, 1, 2, 3, 4], 2, 0) == [0, 2, 4]
    assert shard_batch([0, 1, 2, 3, 4], 2, 1) == [1, 3]
    ev = eval_batches([3, 9, 1, 7], 2)
    assert ev == [[1, 3], [0, 2]]
    assert steps_per_epoch(100, 8, 3) == 5  # 13 batches -> 4 full windows + 1 partial
