"""polyplan.models: the members a chain runs -- the ``Drafter`` interface and what implements it.

    from polyplan.models.drafter import Drafter
    from polyplan.models.model_drafter import ModelDrafter        # a transformers causal LM
    from polyplan.models.llamacpp_drafter import LlamaCppDrafter  # a GGUF through llama.cpp

Also drafters that read a window of the sequence (``windowed``), the model-free drafters
(``model_free``), KV-cache rollback (``kv_cache``), the per-machine exactness probe of a
half-precision target (``exactness``) and the optional llama.cpp runtime (``llamacpp_runtime``).
Where weights come from and the pools that name members are the supply side: ``polyplan.weights``,
which builds these members; nothing here imports it.
"""
