"""ema-core where people train: each integration imports its framework lazily.

``import ema_core.integrations`` imports no framework. Import the module of the one you use
(``import ema_core.integrations.lightning``, and so on for the others in this package); that
module imports its framework then, and each framework is an optional extra
(``pip install ema-core[lightning]``).

* ``lightning``: ``EMACallback``, a Lightning callback built on the torch ``EMA``;
  ``_lightning_args`` checks its arguments when it is built and makes its state key;
  ``_lightning_state`` follows its EMA through a trainer call (kept or rebuilt on the module,
  swapped in for evaluation, saved into and restored from checkpoints).
* ``keras``: ``EMACallback``, a Keras 3 callback (jax and torch backends); ``_keras_weights``
  sorts and reads the weights (and the optimizer's step counter), ``_keras_state`` starts,
  updates, averages, saves and loads the EMA's arrays (one ema-core checkpoint file),
  ``_keras_swap`` puts the averages in for evaluate / predict and the live weights back,
  ``_keras_args`` checks the arguments.
* ``accelerate``: ``register(accelerator, ema)``, save/load pre-hooks that write the EMA as a
  crash-safe safetensors file in each ``save_state`` folder; ``ema_path``;
  ``_accelerate_args`` checks ``register``'s arguments (one registration per name and per EMA).
"""
