# UperNet + abc pyramid backbone (tiny) on ADE20K: configs/upernet_gla_ade20k.py with another mixer.
_base_ = ['./upernet_gla_ade20k.py']
model = dict(backbone=dict(mixer='abc'))
