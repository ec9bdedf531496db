"""Export stage: a merged model proven against base + adapter, adapters for PEFT / vLLM, licence gating."""
