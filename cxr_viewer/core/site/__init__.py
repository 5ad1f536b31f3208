"""Site profiles: a model's scores recalibrated, and its thresholds chosen, on one hospital's own films.

The rooms, each imported by its own name:

- :mod:`~cxr_viewer.core.site.profile`: the versioned profile (schema), its files, and
  :func:`~cxr_viewer.core.site.profile.apply_site_profile`, the one place findings are adjusted;
- :mod:`~cxr_viewer.core.site.fit`: :func:`~cxr_viewer.core.site.fit.fit_site_finding`, the one
  place the site analysis is done (``cxr-train calibrate --site`` and the viewer's wizard);
- :mod:`~cxr_viewer.core.site.stats`: what the site's films show (patient split, bootstrap CIs, reliability);
- :mod:`~cxr_viewer.core.site.drift`: recent scores against the profile's reference distribution;
- :mod:`~cxr_viewer.core.site.labels`: the site's labelled films (a CSV beside a folder).

The figures (ROC and reliability on the site's films) are drawn by
:mod:`cxr_viewer.core.export.site_figures`.
"""
