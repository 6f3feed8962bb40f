"""Data-pipeline helpers registered into MMEngine's root TRANSFORMS (mmseg and mmdet find
them through their parent registry). Imports mmengine only."""
from mmengine.registry import TRANSFORMS


class NameFileOnError:
    """Run one loading transform; if it fails, raise an error that names the file.

    mmseg's ``LoadAnnotations`` reports a corrupt PNG as "cannot identify image file
    <_io.BytesIO ...>", which leaves a user with 20k annotations guessing. Wrap it:
    ``dict(type='NameFileOnError', transform=dict(type='LoadAnnotations', ...))``.

    Inference on a bare image: mmseg's ``inference_model`` and ``MMSegInferencer`` drop a
    test-pipeline step only when its type is exactly ``'LoadAnnotations'``, so this wrapper
    stays in their pipeline, where the results hold an image and nothing to annotate it. A
    wrapped annotation loader (a class named ``LoadAnnotations`` or derived from one, the
    test those APIs apply) then passes the results on unchanged when they carry none of the
    annotation entries that mmseg's and mmdet's datasets write (``ANNOTATION_KEYS``), which
    is what the APIs' own stripping achieves. A dataset sample always carries them, so
    training and evaluation load as before.
    """

    KEYS = ('seg_map_path', 'img_path')
    ANNOTATION_KEYS = ('seg_map_path', 'instances')

    def __init__(self, transform):
        self.transform = TRANSFORMS.build(transform)
        self.loads_annotations = any(c.__name__ == 'LoadAnnotations'
                                     for c in type(self.transform).__mro__)

    def __call__(self, results):
        if self.loads_annotations and not any(k in results for k in self.ANNOTATION_KEYS):
            return results
        try:
            return self.transform(results)
        except Exception as e:
            files = [f'{k}={results[k]}' for k in self.KEYS if results.get(k)]
            raise RuntimeError(f'{type(self.transform).__name__} failed on {", ".join(files)}: '
                               f'{type(e).__name__}: {e}') from e

    def __repr__(self):
        return f'{type(self).__name__}(transform={self.transform!r})'
