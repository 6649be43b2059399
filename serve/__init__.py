"""``ddpm serve``: the whole stack on one machine. The entry point above the API and the
worker: it starts them as processes of their own (by command line, importing neither)."""
