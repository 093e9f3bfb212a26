"""Dev-only: writes mindcoat/data/imagenet_classes.txt, the 1000 ImageNet-1k class names in
class-index order (sorted WordNet synset ids, the order ImageFolder and every released CoaT
checkpoint use), one line each. Needs timm (its ImageNetInfo carries the synset->lemma table);
run once with a torch+timm interpreter:  python tools/make_imagenet_classes.py
"""
import os

from timm.data import ImageNetInfo

OUT = os.path.join(os.path.dirname(__file__), '..', 'mindcoat', 'data', 'imagenet_classes.txt')


def main():
    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(info.num_classes())]
    assert len(names) == 1000 and all(n and '\n' not in n for n in names)
    with open(OUT, 'w', encoding='utf-8') as f:
        f.write('\n'.join(names) + '\n')
    print(f'wrote {len(names)} names to {os.path.normpath(OUT)}')


if __name__ == '__main__':
    main()
