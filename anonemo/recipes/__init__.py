"""Recipes: what each kind of model trains on a fold, and what it hands on to the job.

==================  =====================================================================
recipe              ``model=`` options (``conf/model``)
==================  =====================================================================
``SingleTask``      ``emotion``, ``face`` (the paper's Emotion and Face CNNs) and
                    ``emotion2face`` (the Emotion CNN with a fresh identity head on its base)
``Hybrid``          ``hybrid`` (the paper's Algorithm 1), ``hybrid_robust``,
                    ``hybrid_standardised`` (the recommended adversarial recipe)
==================  =====================================================================

A model config is a constructor call (``_target_``) of its recipe. The job
(:mod:`anonemo.job`) asks the recipe to train, then does what every model shares: fresh heads
on the frozen base (``fresh_heads``), the audit, artifacts and timing. Adding a model is one
recipe module (a :class:`~anonemo.recipes.base.Recipe`) and one config file.
"""
