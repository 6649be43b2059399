"""The remote client of the service: ``ddpm generate --server URL`` (:mod:`client.command`) over
an HTTP client of the API (:mod:`client.service`). It imports nothing of the service and no
torch, so it starts fast and installs with the ``client`` extra alone."""
