"""Webhooks: which URLs may be called (:mod:`api.webhooks.guard`), how a delivery is signed
(:mod:`api.webhooks.signing`, the Standard Webhooks scheme) and the one component that sends
deliveries (:mod:`api.webhooks.dispatcher`). Their state lives in Redis (:mod:`contract.webhooks`)."""
