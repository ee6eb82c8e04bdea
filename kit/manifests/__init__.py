"""Environments → manifests → validation: pure functions of files, no network and no cluster client.

``environments`` loads and checks an environment; ``render`` turns it into the objects the guide
deploys; ``validate`` checks them offline, and its ``checked_render`` is the one place that does both,
for every caller that needs valid manifests (the cluster target's plan and deploy, ``kit validate``).
Importing this package loads none of them: the local target needs environments only.
"""
