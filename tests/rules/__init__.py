"""One test file per rule: a bad model, a good model and a near miss; real models pinned in test_real_models_structural."""
