# UperNet + transformer pyramid backbone (tiny) on ADE20K (softmax baseline): configs/upernet_gla_ade20k.py with another mixer.
_base_ = ['./upernet_gla_ade20k.py']
model = dict(backbone=dict(mixer='transformer'))
