"""``deltatune curve``: a learning curve, "I have N labelled rows: what does more data buy?".

- :mod:`deltatune.curve.subsets`: the seeded, nested, stratified ``data.train_fraction`` subsets;
- :mod:`deltatune.curve.fit`: the inverse power law fitted to the points, its leave-last-out check;
- :mod:`deltatune.curve.runner`: one normal run per (fraction, seed), resumable, then curve.json;
- :mod:`deltatune.curve.report`: the table and curve.html.

Torch-free to import (the runner is given the training function, :func:`deltatune.api.finetune`).
"""
