"""One module per Δθ method (the layout of peft's ``tuners``), each with a ``build`` function:
``build(model, cfg, task_type, modules_to_save) -> model``. Methods are listed, with their
builders, in :mod:`deltatune.delta.registry`; :func:`deltatune.delta.apply_delta` dispatches."""
