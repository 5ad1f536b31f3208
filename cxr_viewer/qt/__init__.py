"""The Qt viewer: thin widgets that listen to :class:`cxr_viewer.core.session.Session`.

Importing this package imports nothing heavy; Qt comes in with the submodules.
"""
