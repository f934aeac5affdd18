"""Static files with content hashes in their names, ES module imports included."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    # The review screen's modules import each other ("./api.js"): rewrite those imports to the hashed names too,
    # so a page never mixes a new module with a cached old one.
    support_js_module_import_aggregation = True
