"""Published reference figures, kept apart from the models so tests and reports can cite them.

PUBLISHED_PARAMS:     name -> (exact published parameter count, source). Only exact figures.
PUBLISHED_GFLOPS:     name -> torchvision's published GFLOPS at 224x224 (these are
                      multiply-adds, i.e. GMACs), single crop.
PAPER_PARAMS_APPROX:  name -> (rounded figure from a paper, source); compare within rounding.
"""
from __future__ import annotations

PUBLISHED_PARAMS: dict[str, tuple[int, str]] = {
    # ResNets and DenseNets: torchvision model cards (IMAGENET1K_V1 weights), 1000 classes.
    'resnet18': (11_689_512, 'torchvision resnet18 (IMAGENET1K_V1)'),
    'resnet34': (21_797_672, 'torchvision resnet34 (IMAGENET1K_V1)'),
    'resnet50': (25_557_032, 'torchvision resnet50 (IMAGENET1K_V1)'),
    'resnet101': (44_549_160, 'torchvision resnet101 (IMAGENET1K_V1)'),
    'resnet152': (60_192_808, 'torchvision resnet152 (IMAGENET1K_V1)'),
    'densenet121': (7_978_856, 'torchvision densenet121 (IMAGENET1K_V1)'),
    'densenet169': (14_149_480, 'torchvision densenet169 (IMAGENET1K_V1)'),
    'densenet201': (20_013_928, 'torchvision densenet201 (IMAGENET1K_V1)'),
    # CIFAR ResNet-20, option-A shortcuts, 10 classes (He et al. 2016 print only 0.27M).
    'resnet20': (269_722, 'He et al. 2016, Table 6: 0.27M; exact option-A count 269,722'),
    # Classic CNNs: torchvision 0.20 model builders at 1000 classes (torchvision's `alexnet` is the
    # single-GPU variant registered here as `alexnet_tv`; `googlenet` without aux heads).
    'alexnet_tv': (61_100_840, 'torchvision 0.20 alexnet'),
    'vgg11': (132_863_336, 'torchvision 0.20 vgg11'),
    'vgg11_bn': (132_868_840, 'torchvision 0.20 vgg11_bn'),
    'vgg13': (133_047_848, 'torchvision 0.20 vgg13'),
    'vgg13_bn': (133_053_736, 'torchvision 0.20 vgg13_bn'),
    'vgg16': (138_357_544, 'torchvision 0.20 vgg16'),
    'vgg16_bn': (138_365_992, 'torchvision 0.20 vgg16_bn'),
    'vgg19': (143_667_240, 'torchvision 0.20 vgg19'),
    'vgg19_bn': (143_678_248, 'torchvision 0.20 vgg19_bn'),
    'googlenet': (6_624_904, 'torchvision 0.20 googlenet (aux_logits=False)'),
}

PUBLISHED_GFLOPS: dict[str, float] = {
    'resnet18': 1.81,
    'resnet34': 3.66,
    'resnet50': 4.09,
    'resnet101': 7.80,
    'resnet152': 11.51,
    'densenet121': 2.83,
    'densenet169': 3.36,
    'densenet201': 4.29,
    # torchvision 0.20 model cards (its `alexnet` is our `alexnet_tv`).
    'alexnet_tv': 0.71,
    'vgg11': 7.61,
    'vgg11_bn': 7.61,
    'vgg13': 11.31,
    'vgg13_bn': 11.31,
    'vgg16': 15.47,
    'vgg16_bn': 15.47,
    'vgg19': 19.63,
    'vgg19_bn': 19.63,
    'googlenet': 1.5,
}

PAPER_PARAMS_APPROX: dict[str, tuple[float, str]] = {
    # He et al. 2016, "Deep Residual Learning for Image Recognition", Table 6 (CIFAR-10).
    'resnet20': (0.27e6, 'He et al. 2016, Table 6: 0.27M'),
    'resnet32': (0.46e6, 'He et al. 2016, Table 6: 0.46M'),
    'resnet44': (0.66e6, 'He et al. 2016, Table 6: 0.66M'),
    'resnet56': (0.85e6, 'He et al. 2016, Table 6: 0.85M'),
    'resnet110': (1.7e6, 'He et al. 2016, Table 6: 1.7M'),
    'resnet1202': (19.4e6, 'He et al. 2016, Table 6: 19.4M'),
    # Huang et al. 2017, "Densely Connected Convolutional Networks", Table 2.
    'densenet_bc_100_12': (0.8e6, 'Huang et al. 2017, Table 2: DenseNet-BC (L=100, k=12) 0.8M'),
    # Simonyan & Zisserman 2015, Table 2 (millions, 1000 classes).
    'vgg11': (133e6, 'Simonyan & Zisserman 2015, Table 2: A 133M'),
    'vgg13': (133e6, 'Simonyan & Zisserman 2015, Table 2: B 133M'),
    'vgg16': (138e6, 'Simonyan & Zisserman 2015, Table 2: D 138M'),
    'vgg19': (144e6, 'Simonyan & Zisserman 2015, Table 2: E 144M'),
}
