"""Data-pipeline helpers registered into MMEngine's root TRANSFORMS (mmseg and mmdet find
them through their parent registry). Imports mmengine only."""
from mmengine.registry import TRANSFORMS


class NameFileOnError:
    """Run one loading transform; if it fails, raise an error that names the file.

    mmseg's ``LoadAnnotations`` reports a corrupt PNG as "cannot identify image file
    <_io.BytesIO ...>", which leaves a user with 20k annotations guessing. Wrap it:
    ``dict(type='NameFileOnError', transform=dict(type='LoadAnnotations', ...))``.
    """

    KEYS = ('seg_map_path', 'img_path')

    def __init__(self, transform):
        self.transform = TRANSFORMS.build(transform)

    def __call__(self, results):
        try:
            return self.transform(results)
        except Exception as e:
            files = [f'{k}={results[k]}' for k in self.KEYS if results.get(k)]
            raise RuntimeError(f'{type(self.transform).__name__} failed on {", ".join(files)}: '
                               f'{type(e).__name__}: {e}') from e

    def __repr__(self):
        return f'{type(self).__name__}(transform={self.transform!r})'
