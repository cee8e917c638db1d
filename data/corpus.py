"""Deterministic generator for the course's synthetic short-story corpus.

Why a synthetic corpus?  The course must work offline and must give every
learner exactly the same training data, so that losses, samples and tests are
comparable.  A small language model (a few million parameters, trained on a
laptop CPU for minutes) needs text that is

* simple enough to learn visibly fast: plain English, short sentences, a
  recognisable story shape (who, where, goal, obstacle, resolution), and
* varied enough not to be memorised: thousands of word types, random cast,
  places, objects and numbers in every story, many sentence templates,

while staying *coherent within a story*: the hero's name, pronouns, pet, town
and the object of the plot are chosen once per story and then reused, so the
model can learn to copy them forward (a first taste of what attention does).

Determinism: only the standard library is used, and every story gets its own
``random.Random`` seeded with a string such as ``"tinystories-train-v1:42"``.
String seeds are hashed with SHA-512 by ``random.seed`` (version 2), which does
not depend on ``PYTHONHASHSEED``, the platform or the CPU, so the output is
byte-identical everywhere with the same Python version (3.11 is the course's).
We never iterate over sets and never use ``hash()``.

Usage::

    python -m data.corpus            # write data/corpus/{train,val}.txt
    python -m data.build             # same, and update data/MANIFEST.json
"""

from __future__ import annotations

import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SEPARATOR = "<|endoftext|>"
"""Marks the boundary between stories, on a line of its own (GPT-2 convention)."""

GENERATOR_VERSION = 1
"""Bump when the generator changes on purpose; it is part of the seeds."""

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class SplitSpec:
    """How one split is generated: its seed stream and how much text to write."""

    name: str
    seed: str
    target_bytes: int


# Targets sit a little above 5 MiB / 0.5 MiB, so both "5 MB" readings hold.
SPLITS = {
    "train": SplitSpec("train", f"tinystories-train-v{GENERATOR_VERSION}", 5_400_000),
    "val": SplitSpec("val", f"tinystories-val-v{GENERATOR_VERSION}", 560_000),
}

WORD_TYPE_RANGE = (3000, 8000)
"""Distinct lower-cased word types we promise in train.txt (see ``word_types``)."""


# ---------------------------------------------------------------------------
# Word lists.  Written as plain whitespace-separated text to keep them readable.
# Verbs and nouns carry their irregular forms; regular forms are derived below.
# ---------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Split a block of whitespace-separated words into a list (order kept)."""
    return text.split()


def phrases(text: str) -> list[str]:
    """Split a block into entries separated by ``|`` or newlines (entries may contain spaces)."""
    return [p.strip() for p in re.split(r"[|\n]", text) if p.strip()]


GIRL_NAMES = words("""
    Mia Emma Olivia Ava Sophia Isabella Lily Grace Chloe Zoe Ella Ruby Hannah Nora
    Lucy Maya Anna Clara Alice Sara Leah Ivy Stella Hazel Violet Aurora Luna Penelope
    Rosa Daisy Poppy Willow Iris Fiona Greta Heidi Ingrid Jasmine Kira Lena Mila Nina
    Olga Paula Rita Sofia Tessa Uma Vera Wendy Xenia Yara Zara Amara Bella Cora Dora
    Elsa Freya Gemma Hope Isla Jade Kate Lola Molly Nadia Opal Pia Rae Sadie Tara Una
    Valerie Wren Yasmin Zelda Abigail Beatrice Celia Delia Eliza Flora Gloria Harriet
    Imogen Julia Laura Martha Naomi Priya Aisha Fatima Mei Yuki Sakura Ananya Leila
    Amina Chiara Elena Marta Lucia Matilda Edith Agnes Mabel Nell Orla Phoebe Ramona
    Sienna Thea Talia Esme Hattie Juno Keira Lottie Maisie Nessa Odette Petra Rosie
""")

BOY_NAMES = words("""
    Tom Max Leo Sam Ben Jack Noah Liam Oliver Lucas Ethan Mason Logan Owen Henry Theo
    Finn Hugo Oscar Felix Arthur Jasper Milo Otto Ezra Eli Caleb Isaac Adam Daniel
    David Samuel Peter Paul George Harry Freddie Alfie Archie Teddy Ravi Arjun Omar
    Yusuf Kenji Hiro Chen Wei Diego Carlos Mateo Pablo Marco Luca Enzo Nico Rafael
    Tomas Ivan Boris Dmitri Sven Lars Erik Anders Kofi Kwame Tariq Amir Idris Jonah
    Miles Rory Seth Toby Victor Walter Xavier Zack Abel Bruno Cyrus Dexter Edgar Frank
    Gus Hector Ian Joel Louis Martin Ned Otis Percy Ralph Simon Trevor Vincent Wesley
    Zane Ahmed Rohan Sanjay Barnaby Cedric Douglas Elliot Gideon Harvey Jude Kit Lenny
    Monty Nathan Ollie Patrick Quentin Rupert Stanley Tobias Wilbur Angus Basil Clement
""")

NEUTRAL_NAMES = words("""
    Alex Sky Robin Jamie Riley Morgan Taylor Jordan Casey Avery Charlie Sage River
    Rowan Remy Ash Quinn Noel Jules Frankie Billie Ari Marlow Eden
""")

# A small share of names with accents, so byte-level tokenizers meet multi-byte UTF-8.
ACCENTED_GIRL_NAMES = words("Zoë Chloé Renée Amélie Inés Léa Anaïs Noémie")
ACCENTED_BOY_NAMES = words("José Noé Héctor Joël Søren Björn André Ramón Jérôme")
ACCENTED_NAME_SHARE = 0.04

SURNAMES = words("""
    Brown Smith Patel Garcia Okafor Nguyen Kim Lopez Muller Rossi Tanaka Kowalski
    Johansson Baker Fisher Carter Hill Wood Green Reed Stone Fox Lane Gray Marsh Bell
    Moss Park Ward Hale Shaw Frost Cole Hart Knight Price Rivers Banks Brooks Wells
    Field Morris Young King Singh Haddad Novak Silva Costa Mendez Abara Lindqvist
    Petrov Yilmaz Dubois Hughes Pemberton Whitlock Ashby Thornton Fairweather Plum
""")

PET_NAMES = words("""
    Biscuit Pepper Muffin Whiskers Patch Buttons Noodle Pickle Ziggy Coco Mango Peanut
    Bubbles Shadow Socks Ginger Pumpkin Waffles Sprout Pebble Clover Marble Nugget
    Tofu Olive Bean Fudge Toffee Dumpling Scout Rusty Dusty Snowball Thunder Comet
    Rocket Jellybean Pip Sunny Maple Hazelnut Acorn Blueberry Sparky Bandit Cookie
    Domino Gizmo Jinx Kiwi Lulu Mochi Nacho Pretzel Quill Rascal Sushi Truffle Widget
    Yoyo Zippy Crumpet Bramble Cinnamon Dottie Fidget Goose Honeybee Inky Juniper
""")

TOWN_PARTS_FIRST = words("""
    Mill Oak Elm Ash Stone Fern Willow Maple Birch Pine Rose Thorn Clover Honey Silver
    Green Red Cold High Fair Sun Moon Star Wind Rain Frost Lake River Bay Fox Crow
    Hawk Deer Otter Apple Cherry Hazel Heather Bramble
""")
TOWN_PARTS_LAST = words("""
    brook ford field ton bury wood dale vale hill haven port bridge wick more cliff
    gate well side ley stead
""")

RELATIVES_FEMALE = words("Grandma Granny Nana Mum Mom Auntie")
RELATIVES_MALE = words("Grandpa Grandad Papa Dad")
FAMILY_MEMBERS = phrases("""
    mother | father | grandmother | grandfather | two older sisters | little brother |
    big sister | aunt and uncle | parents | mother and baby brother | father and three cousins |
    grandparents | twin brothers | little sister
""")

# Noun specs: "singular" or "singular:plural" for irregular plurals.
PET_KINDS = words("""
    dog cat rabbit hamster puppy kitten parrot turtle tortoise pony ferret
    mouse:mice canary parakeet hedgehog duck goat lizard guinea-pig
""")

WILD_ANIMALS = words("""
    fox:foxes badger otter beaver deer:deer moose:moose bear wolf:wolves squirrel
    hedgehog mole vole shrew weasel stoat rabbit hare raccoon skunk porcupine
    armadillo koala kangaroo wombat panda tiger lion leopard cheetah zebra giraffe
    elephant hippo rhino camel llama alpaca yak monkey gorilla lemur sloth bat frog
    toad newt lizard snake gecko chameleon snail slug worm crab lobster seal walrus
    whale dolphin octopus:octopuses jellyfish:jellyfish starfish:starfish salmon:salmon
    trout:trout turtle chipmunk lynx:lynxes bison:bison donkey horse cow calf:calves
    sheep:sheep lamb pig piglet goat hen chicken rooster goose:geese mouse:mice rat
""")

BIRDS = words("""
    robin sparrow blackbird crow magpie pigeon dove owl hawk eagle swallow wren finch
    starling thrush seagull duck goose:geese swan heron kingfisher woodpecker parrot
    canary jay cardinal bluebird hummingbird pelican puffin flamingo peacock stork
    crane ostrich:ostriches penguin lark nightingale raven cuckoo
""")

INSECTS = words("""
    bee ant butterfly:butterflies moth beetle ladybug grasshopper cricket dragonfly:dragonflies
    firefly:fireflies caterpillar spider wasp mosquito:mosquitoes flea ladybird bumblebee
""")

MORE_ANIMALS = words("""
    aardvark antelope baboon buffalo:buffaloes caribou:caribou cobra coyote crocodile alligator
    dingo eel emu gazelle gerbil hyena ibex:ibexes iguana jackal jaguar meerkat mongoose
    narwhal ocelot orangutan panther platypus:platypuses puma reindeer:reindeer salamander
    seahorse shark squid stingray tapir toucan vulture warthog wolverine beaver bobcat
    chinchilla hummingbird manatee marmot mole pangolin polecat quail seal tadpole
""")

ANIMAL_SOUNDS = {
    "dog": "bark", "puppy": "yap", "cat": "meow", "kitten": "mew", "cow": "moo",
    "duck": "quack", "owl": "hoot", "goose": "honk", "horse": "neigh", "pony": "whinny",
    "sheep": "bleat", "lamb": "bleat", "pig": "oink", "hen": "cluck", "chicken": "cluck",
    "rooster": "crow", "frog": "croak", "wolf": "howl", "bear": "growl", "lion": "roar",
    "tiger": "roar", "bee": "buzz", "parrot": "squawk", "mouse": "squeak", "snake": "hiss",
    "donkey": "bray", "robin": "chirp", "sparrow": "chirp", "crow": "caw", "seagull": "screech",
    "monkey": "chatter", "dove": "coo", "pigeon": "coo", "goat": "bleat", "canary": "sing",
    "cricket": "chirp", "hamster": "squeak", "elephant": "trumpet",
}

TREES = words("""
    oak maple birch pine willow elm ash beech cedar chestnut apple cherry palm spruce
    fir holly hazel poplar sycamore walnut lemon olive magnolia baobab plum pear
""")

FLOWERS = words("""
    rose tulip daisy:daisies daffodil sunflower lily:lilies poppy:poppies violet dandelion
    buttercup bluebell marigold orchid pansy:pansies peony:peonies snowdrop clover
    iris:irises jasmine:jasmine lilac forget-me-not crocus:crocuses
""")

DRINKS = phrases("tea | hot cocoa | lemonade | milk | apple juice | orange juice | warm milk with honey | mint tea | hot chocolate")

COUNT_FOODS = words("""
    avocado:avocados kiwi nectarine pomegranate papaya gooseberry:gooseberries
    cranberry:cranberries date olive almond chestnut pistachio:pistachios beetroot leek
    parsnip zucchini:zucchinis eggplant artichoke lettuce:lettuces cauliflower
    omelet toffee lollipop cherry-tomato:cherry-tomatoes rice-cake pickle meat-pie plum-cake
    apple banana pear plum peach:peaches cherry:cherries grape lemon lime orange melon
    mango:mangoes strawberry:strawberries blueberry:blueberries raspberry:raspberries
    apricot fig coconut pineapple carrot potato:potatoes tomato:tomatoes onion turnip
    radish:radishes cucumber pumpkin cabbage mushroom cake pie cookie muffin biscuit
    cupcake pancake waffle sandwich:sandwiches pretzel bun roll tart scone doughnut
    bagel croissant dumpling egg walnut hazelnut peanut cracker sausage meatball
""")

MASS_FOODS = phrases("""
    soup | bread | cheese | honey | jam | porridge | rice | pasta | butter | milk | tea |
    hot cocoa | lemonade | orange juice | apple juice | stew | yogurt | popcorn | ice cream |
    pudding | custard | toast | cornbread | noodle soup | spaghetti | gingerbread | fudge |
    chocolate | oatmeal | salad | pizza | curry | pancakes with syrup | fruit salad | cinnamon rolls |
    lentil soup | mashed potatoes | baked beans | tomato soup | vegetable stew | rice pudding |
    apple crumble | cherry pie | cheese on toast | scrambled eggs | peanut butter | marmalade |
    blueberry muffins | carrot cake | banana bread | warm soup with dumplings | gingerbread biscuits
""")

TOYS = phrases("""
    kite | ball | doll | teddy bear | toy boat | toy train | puzzle | drum | whistle |
    spinning top | robot | puppet | rocking horse | balloon | music box | paper crown |
    sailboat | wagon | scooter | skateboard | bicycle | jump rope | wooden sword | rubber duck |
    harmonica | marble | yo-yo | toy car | kaleidoscope | snow globe | paper plane | glider |
    dollhouse | toy rocket | pinwheel | hula hoop | toy castle | stuffed rabbit | tin soldier |
    wind-up mouse:wind-up mice | board game | xylophone | toy tractor | jack-in-the-box:jacks-in-the-box |
    sock puppet | frisbee | beach ball | toy piano | race car | dinosaur | pogo stick | toy drum
""")

TOOLS = phrases("""
    hammer | saw | shovel | spade | rake | watering can | ladder | rope | bucket | broom |
    wrench:wrenches | screwdriver | flashlight | lantern | compass:compasses | map |
    telescope | magnifying glass:magnifying glasses | net | fishing rod | axe | paintbrush:paintbrushes |
    chisel | drill | needle | thimble | wheelbarrow | trowel | pencil | notebook | torch:torches
""")

CLOTHES = phrases("""
    hat | scarf:scarves | coat | jacket | sweater | boot | glove | mitten | sock | shoe |
    raincoat | umbrella | cap | helmet | apron | vest | belt | ribbon | necklace | bracelet |
    ring | brooch:brooches | backpack | basket | bag | purse | wallet | cardigan | bow tie | cloak
""")

HOUSEHOLD = phrases("""
    cup | mug | plate | bowl | spoon | fork | knife:knives | teapot | kettle | jar | bottle |
    pot | pan | lamp | candle | clock | mirror | pillow | blanket | quilt | rug | chair |
    stool | table | bench:benches | shelf:shelves | drawer | cupboard | box:boxes | chest:chests |
    key | lock | book | letter | envelope | parcel | postcard | photograph | painting | vase |
    bookcase | sofa | armchair | bed | wardrobe | doormat | curtain | window | radio | piano |
    saucepan | colander | ladle | whisk:whisks | rolling pin | teacup | saucer | napkin | tablecloth |
    toaster | cushion | hatbox:hatboxes | sewing box:sewing boxes | picture frame | hourglass:hourglasses |
    birdcage | flowerpot | doorknob | umbrella stand | cookie jar | jam jar | milk jug | lampshade
""")

TREASURES = phrases("""
    shell | pebble | stone | feather | acorn | pinecone | crystal | coin | medal | trophy:trophies |
    badge | seed | button | marble | bead | key | locket | ring | star map | bottle cap |
    arrowhead | fossil | pearl | gemstone | seashell | stamp | ticket | pocket watch:pocket watches |
    conker | sea glass:sea glass | tooth:teeth | horseshoe | snail shell | four-leaf clover |
    keyring | postage stamp | old coin | glass marble | bird's egg | ruby:rubies | sapphire | amethyst
""")

INSTRUMENTS = words("""
    violin flute guitar piano drum trumpet harp cello banjo ukulele accordion
    tambourine xylophone recorder clarinet trombone
""")

FURNITURE_SPOTS = phrases("""
    bed | sofa | kitchen table | bookcase | wardrobe | stairs | rug | armchair | cupboard |
    big chair | desk | laundry basket | piano | coat rack | bathtub | toy box | old chest
""")

HOUSE_ROOMS = phrases("""
    kitchen | attic | cellar | hallway | living room | bedroom | bathroom | porch | garden |
    garage | shed | pantry | playroom | study | balcony | laundry room
""")

OUTDOOR_PLACES = phrases("""
    park | garden | meadow | forest | wood | orchard | beach | cove | hill | valley | field |
    river | lake | pond | stream | harbor | pier | village square | playground | market |
    bridge | lighthouse | windmill | farm | barn | castle | tower | cave | island | marsh |
    swamp | cliff | waterfall | canyon | desert | jungle | mountain | ridge | path | lane |
    moor | heath | dune | lagoon | estuary:estuaries | glen | creek | spring | pasture | hedgerow |
    footbridge | canal | towpath | lock gate | old mill | ruined abbey | stone circle | bay |
    road | tunnel | gate | fence | well | quarry | vineyard | greenhouse | allotment | riverbank |
    hillside | clearing | duck pond | bandstand | boathouse | fountain | station | zoo
""")

SHOPS = phrases("""
    bakery:bakeries | library:libraries | post office | toy shop | bookshop | café | museum |
    school | market | hospital | fire station | bank | pharmacy:pharmacies | flower shop |
    hardware store | ice cream shop | train station | town hall | barber shop | music shop |
    pet shop | cheese shop | bicycle shop | clock shop | sweet shop | theater | swimming pool |
    fishmonger's | greengrocer's | bookbinder's | hat shop | candle shop | bakery stall | laundrette |
    toy museum | tea room | bus station | fish market | sports hall | art gallery:art galleries
""")

OCCUPATIONS = phrases("""
    baker | farmer | fisherman:fishermen | teacher | doctor | nurse | builder | carpenter |
    painter | potter | weaver | tailor | librarian:librarians | gardener | postman:postmen |
    shopkeeper | beekeeper | shepherd | miller | blacksmith | cook | chef | pilot | sailor |
    captain | bus driver | mechanic | plumber | firefighter | police officer | scientist |
    inventor | artist | musician | singer | dancer | poet | writer | judge | mayor |
    zookeeper | vet | dentist | barber | clockmaker | toymaker | cobbler | locksmith |
    lighthouse keeper | park ranger | engineer | astronaut | photographer | architect |
    juggler | acrobat | magician | sculptor | glassblower | woodcutter | ferryman:ferrymen |
    stonemason | candlemaker | mapmaker | boatbuilder | chimney sweep | grocer | butcher | jeweler |
    detective | reporter | conductor | lifeguard | waiter | cashier | optician | pharmacist
""")

COUNTRIES = words("""
    France Spain Italy Germany Japan China Kenya India Brazil Portugal Greece Egypt Korea
    Poland Wales Turkey Finland Mexico Peru Canada Australia Norway Iceland Chile Ghana
    Nigeria Vietnam Thailand Ireland Scotland Morocco Argentina Sweden Denmark Austria
""")

BODY_PARTS = words("""
    nose ear eye hand foot:feet knee elbow shoulder finger toe thumb chin cheek forehead
    tummy back arm leg head neck wrist ankle heel tooth:teeth lip tongue
""")

COUNTRY_LANGUAGES = [
    ("France", "French"), ("Spain", "Spanish"), ("Italy", "Italian"), ("Germany", "German"),
    ("Japan", "Japanese"), ("China", "Chinese"), ("Kenya", "Swahili"), ("India", "Hindi"),
    ("Brazil", "Portuguese"), ("Portugal", "Portuguese"), ("Greece", "Greek"), ("Egypt", "Arabic"),
    ("Korea", "Korean"), ("Poland", "Polish"), ("Wales", "Welsh"), ("Turkey", "Turkish"),
    ("Finland", "Finnish"), ("Mexico", "Spanish"), ("Peru", "Spanish"), ("Norway", "Norwegian"),
    ("Iceland", "Icelandic"), ("Sweden", "Swedish"), ("Denmark", "Danish"), ("Austria", "German"),
    ("Vietnam", "Vietnamese"), ("Thailand", "Thai"), ("Morocco", "Arabic"), ("Argentina", "Spanish"),
    ("Ireland", "Irish"), ("Ghana", "Twi"), ("Nigeria", "Yoruba"), ("the Netherlands", "Dutch"),
]

SEATS = phrases("""
    an old bench | a tree stump | the doorstep | a low wall | a mossy rock | a wooden stool |
    the bottom step | an upturned bucket | a fallen log | the edge of the bed
""")

LANGUAGES = words("""
    French Spanish Italian German Japanese Chinese Swahili Hindi Portuguese Dutch Greek
    Arabic Korean Russian Polish Welsh Turkish Finnish
""")

CRAFT_MATERIALS = phrases("""
    sheet of paper:sheets of paper | piece of string:pieces of string | button | bead |
    ribbon | feather | pine cone | cardboard box:cardboard boxes | paper cup |
    bottle cap | stick | shell | scrap of cloth:scraps of cloth | wooden spoon | cork |
    sheet of gold paper:sheets of gold paper | nail | plank | marble | sequin | pipe cleaner
""")
MASS_MATERIALS = phrases("""
    glue | paint | glitter | tape | clay | yarn | wool | string | sand | flour | sugar |
    wire | fabric | cardboard | paper | wax | thread
""")

EVENTS = phrases("""
    summer fair | harvest festival | winter market | spring parade | school play |
    birthday party | village picnic | lantern festival | midsummer dance | town fair |
    flower show | boat festival | street party | music night | autumn feast | kite festival
""")

CONTESTS = phrases("""
    baking contest | boat race | kite contest | sandcastle contest | spelling bee |
    talent show | pumpkin show | painting contest | singing contest | three-legged race |
    pie contest | chess tournament | sack race | scarecrow contest | poetry contest |
    paper plane contest | vegetable show | dance competition | bicycle race | puzzle race
""")

PLANTS_TO_GROW = words("""
    sunflower tomato:tomatoes pumpkin bean pea carrot strawberry:strawberries rose
    tulip lettuce:lettuces marigold cucumber radish:radishes potato:potatoes pepper
    melon daisy:daisies zucchini:zucchinis onion
""")

COLORS = words("""
    red blue green yellow orange purple pink brown black white gray silver golden
    turquoise crimson scarlet amber beige ivory lavender maroon navy olive teal cream
    copper bronze emerald indigo lilac coral
""")

SIZES = words("""
    gigantic colossal teeny massive skinny stubby lanky chunky oval lopsided
    big small tiny huge little tall short long round square flat thin thick wide
    narrow heavy light giant enormous miniature slim plump pointy curly crooked bumpy
""")

QUALITIES = words("""
    wooden metal glass paper woolen leather silk cotton clay rubber velvet straw brass
    iron soft hard rough shiny dull fluffy fuzzy furry sticky slippery warm cool
    sparkly glittering shimmering bright pale faded striped spotted checkered old new
    ancient cracked bent rusty squeaky creaky wobbly sturdy fragile delicate precious
    rare strange odd magic mysterious special ordinary favorite lucky secret beautiful
    lovely pretty handsome plain fancy simple polished painted carved knitted embroidered
    gleaming glowing twinkling speckled freckled dappled frilly lacy feathery prickly spiky
    crinkly crumpled wrinkled tangled knotted patched mended dented chipped scratched battered
    sparkling silvery velvety satin tartan woven crocheted hand-painted homemade secondhand
    antique old-fashioned newfangled enchanted glorious cozy snug dainty bulky clunky
""")

PRAISE = words("""
    beautiful lovely wonderful splendid marvelous magnificent perfect gorgeous dazzling
    charming elegant neat colorful amazing brilliant fantastic excellent superb remarkable
""")

FEELINGS = words("""
    happy sad glad cheerful joyful excited nervous worried scared afraid frightened
    brave bold curious confused puzzled surprised amazed astonished proud ashamed
    embarrassed shy lonely bored tired sleepy hungry thirsty grumpy cross angry upset
    calm relaxed hopeful thankful grateful relieved delighted thrilled anxious jealous
    impatient patient determined sorry disappointed content peaceful eager restless
    bewildered flustered frazzled cheery giddy bashful sheepish wistful homesick sulky
    chirpy perky drowsy dizzy jittery edgy fretful glum mopey spellbound awestruck
    uneasy startled furious gloomy hopeless cheerless merry overjoyed
""")

TRAITS = words("""
    kind gentle clever smart wise silly funny playful helpful polite honest generous
    cheerful careful quick busy quiet friendly shy brave curious creative thoughtful
    talkative cheeky mischievous adventurous patient sensible sweet jolly fearless
    loyal tidy lively clever imaginative hardworking energetic cheerful bright caring
    good-natured daring dreamy spirited warmhearted nimble resourceful inventive practical
    observant considerate dependable easygoing bubbly sunny tender reliable
    witty chatty earnest humble sincere trusting soft-spoken quick-witted
""")

FLAWS = words("clumsy forgetful impatient shy stubborn messy bossy grumpy careless lazy noisy")

WEATHERS = words("sunny rainy cloudy windy snowy foggy stormy misty frosty chilly breezy warm hot cold icy gray bright")

ADVERBS = words("""
    quickly slowly quietly loudly softly gently carefully happily sadly proudly bravely
    kindly politely angrily nervously excitedly eagerly calmly patiently cheerfully
    sleepily firmly brightly warmly shyly boldly anxiously hopefully thoughtfully
    seriously gladly sweetly grumpily curiously wisely sternly merrily lazily briskly
    cautiously gracefully clumsily hastily silently noisily joyfully tenderly secretly
    awkwardly lightly heavily smoothly neatly roughly timidly dreamily
    loyally steadily wearily playfully gratefully helpfully honestly cleverly
""")

WEEKDAYS = words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
MONTHS = words("January February March April May June July August September October November December")
SEASONS = words("spring summer autumn winter")

NUMBER_WORDS = words("""
    zero one two three four five six seven eight nine ten eleven twelve thirteen
    fourteen fifteen sixteen seventeen eighteen nineteen twenty
""")
TENS_WORDS = words("zero ten twenty thirty forty fifty sixty seventy eighty ninety")
ORDINALS = words("""
    zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh
    twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth
""")

# Verb specs: "base" (regular), "base*" (double the last consonant: stop -> stopped),
# or "base:past:participle" for irregular verbs.  A spec may be followed by the
# rest of a phrase ("fly:flew:flown kites"); only the first word is inflected.
ACTIVITIES = phrases("""
    swim*:swam:swum | dance | sing:sang:sung | paint | draw:drew:drawn | read:read:read books |
    cook | bake cookies | skate | sail | hike | knit* | whistle | hum* | explore |
    climb trees | fly:flew:flown kites | build:built:built sandcastles | collect shells |
    collect stamps | play chess | play hide-and-seek | play football | play the {instrument} |
    ride:rode:ridden {his} bicycle | skip* stones | watch birds | pick flowers |
    tell:told:told jokes | write:wrote:written poems | make:made:made paper boats | do:did:done puzzles |
    dig:dug:dug* in the garden | splash in puddles | jump rope | juggle | fish | row boats |
    feed:fed:fed the ducks | look at the stars | count the clouds | roll down hills |
    make:made:made up songs | bake bread | draw:drew:drawn maps | sketch {animals} |
    tinker with old clocks | grow:grew:grown vegetables | build:built:built forts |
    play the {instrument} | practice cartwheels | race paper boats | invent games |
    learn new words | visit the {shop} | chase butterflies | paint pictures of {animals}
""")

MOVES = phrases("""
    walk | run*:ran:run | hurry | rush | dash | race | stroll | wander | march | tiptoe |
    creep:crept:crept | crawl | skip* | hop* | jog* | trudge | cycle | zoom | scurry | plod* |
    shuffle | sprint | amble | scramble | bounce | skate | stride:strode:stridden | trot* |
    stomp | waddle | saunter | gallop | hurtle | clatter | pedal | bound
""")

REACTIONS = phrases("""
    sneeze | yawn | giggle | shiver | blink | nod* | shrug* | frown | grin* | smile | wave |
    stretch | sigh | gasp | cough | hiccup | wink | blush | tremble | wobble | stumble | trip* |
    fall:fell:fallen over | sit:sat:sat down | stand:stood:stood up | kneel:knelt:knelt down |
    crouch | peek | peer | stare | glance around | listen | wait | rest | nap* | snore | doze |
    clap* | cheer | chuckle | sniff | squint | pout | gulp | shudder | fidget | hum* | whistle
""")

BIRD_ACTIONS = phrases("""
    fly:flew:flown | swoop | glide | circle | flutter | soar | dive | hover | flap* around |
    dart | wheel | perch | hop* about | sing:sang:sung
""")

EAT_VERBS = phrases("""
    eat:ate:eaten | munch | nibble | gobble | chew | crunch | taste | finish | enjoy | share |
    devour | swallow | gulp down | polish off
""")

PET_SOUNDS = {
    "dog": "bark", "cat": "meow", "rabbit": "sniff", "hamster": "squeak", "puppy": "yap",
    "kitten": "mew", "parrot": "squawk", "turtle": "yawn", "tortoise": "yawn", "pony": "whinny",
    "ferret": "chatter", "mouse": "squeak", "canary": "sing:sang:sung", "parakeet": "chirp",
    "hedgehog": "snuffle", "duck": "quack", "goat": "bleat", "lizard": "blink", "guinea-pig": "squeak",
}

HANDLE_VERBS = phrases("""
    carry | hold:held:held | lift | drop* | find:found:found | hide:hid:hidden | fix | mend |
    repair | clean | wash | polish | paint | decorate | wrap* | open | close | fill | pack |
    share | borrow | lend:lent:lent | buy:bought:bought | trade | give:gave:given |
    bring:brought:brought | take:took:taken | fetch | catch:caught:caught | shake:shook:shaken |
    squeeze | fold | tie | examine | inspect | measure | weigh | sketch | draw:drew:drawn |
    show:showed:shown | hug* | guard | protect | dust | brush | sniff | admire | study |
    count | check | grab* | tap* | wave | balance | rescue | hug*
""")

# Cleaning a thing ("she polished the kite") and cleaning a place ("swept the bakery").
CLEAN_VERBS = phrases("clean | wash | polish | dust | scrub* | wipe | rinse | brush | shine:shone:shone")
TIDY_VERBS = phrases("clean | sweep:swept:swept | tidy | dust | mop* | scrub* | paint | decorate | air out")

FOOD_VERBS = phrases("""
    slice | chop* | peel | cook | bake | wash | sniff | pack | wrap* | buy:bought:bought |
    carry | sample | gather | weigh | pick | sort | toss | mash | squash | grate | dice |
    roast | boil | fry | stew | butter | sprinkle | stir* | mix | knead
""")

ANIMAL_VERBS = phrases("""
    feed:fed:fed | pat* | stroke | brush | chase | follow | call | watch | carry | hug* |
    count | photograph | draw:drew:drawn | greet | tickle | comfort | wash | walk
""")

# Verbs that take a "that ..." clause ("she hoped that ...").
MENTAL_VERBS = phrases("""
    know:knew:known | think:thought:thought | hope | wish | believe | guess | realize |
    remember | decide | imagine | dream | suppose | understand:understood:understood |
    expect | feel:felt:felt | promise | pretend | hear:heard:heard | see:saw:seen | sense | trust
""")

SPEECH_TAGS_STATEMENT = words("""
    said said said said replied answered whispered shouted called cried laughed
    explained announced exclaimed sighed grumbled muttered mumbled added agreed
    suggested promised admitted insisted warned declared giggled chuckled
""")
SPEECH_TAGS_QUESTION = words("asked asked asked wondered whispered called inquired")

# Emojis (4-byte UTF-8, plus the 3-byte star) appear only on lines whose mood they fit.
EMOJIS = {
    "happy": ["🎉", "😊", "🌈", "🌟", "👍", "🙂", "⭐", "🎈", "🐾"],
    "sad": ["😢", "😮", "😟"],
}
EMOJI_SHARE = 0.15

GENERIC_MORALS = phrases("""
    friends can solve problems together
    there is no shame in asking for help
    even a small helper can make a big difference
    a plan works better than a panic
""")

MORALS_BY_PLOT = {
    "plot_lost_object": phrases("""
        it is good to keep your things in a safe place
        every problem has a solution if you keep looking
    """),
    "plot_delivery": phrases("""
        kindness always comes back to you
        small steps can take you a long way
        a promise is worth keeping, even when the road is hard
    """),
    "plot_making": phrases("""
        the best gifts are the ones you make yourself
        it is fine to make mistakes, as long as you learn from them
        being patient is worth it
    """),
    "plot_rescue": phrases("""
        kindness always comes back to you
        we should always be gentle with animals
    """),
    "plot_learning": phrases("""
        practice makes hard things easier
        it is fine to make mistakes, as long as you learn from them
        small steps can take you a long way
    """),
    "plot_growing": phrases("""
        being patient is worth it
        good things take time
        what you look after every day will grow
    """),
    "plot_contest": phrases("""
        doing your best matters more than winning
        practice makes hard things easier
        a good friend cheers for you whether you win or lose
    """),
    "plot_quarrel": phrases("""
        it is better to share than to argue
        saying sorry can fix a lot
        listening is as important as talking
        telling the truth is the best way
    """),
}


# ---------------------------------------------------------------------------
# Inflection helpers: regular English rules plus the explicit exceptions above.
# ---------------------------------------------------------------------------

VOWELS = "aeiou"


@dataclass(frozen=True)
class Verb:
    """All the forms of a verb phrase we use, e.g. base="fly kites", ing="flying kites"."""

    base: str
    third: str
    past: str
    participle: str
    ing: str


def parse_verb(spec: str) -> Verb:
    """Turn a verb spec ("stop*", "fly:flew:flown kites") into its five forms."""
    head, _, rest = spec.partition(" ")
    tail = " " + rest if rest else ""
    parts = head.split(":")
    double = parts[0].endswith("*")
    base = parts[0].rstrip("*")
    past = parts[1] if len(parts) > 1 else regular_past(base, double)
    participle = parts[2] if len(parts) > 2 else past
    forms = (base, third_person(base), past, participle, ing_form(base, double))
    return Verb(*(form + tail for form in forms))


def third_person(base: str) -> str:
    """He/she form: walk -> walks, fly -> flies, wash -> washes, have -> has."""
    if base == "have":
        return "has"
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        return base + "es"
    if base.endswith("y") and base[-2:-1] not in VOWELS:
        return base[:-1] + "ies"
    return base + "s"


def regular_past(base: str, double: bool) -> str:
    """Past tense of a regular verb: walk -> walked, stop* -> stopped, hurry -> hurried."""
    if double:
        return base + base[-1] + "ed"
    if base.endswith("e"):
        return base + "d"
    if base.endswith("y") and base[-2:-1] not in VOWELS:
        return base[:-1] + "ied"
    return base + "ed"


def ing_form(base: str, double: bool) -> str:
    """Present participle: run* -> running, make -> making, tie -> tying, see -> seeing."""
    if double:
        return base + base[-1] + "ing"
    if base.endswith("ie"):
        return base[:-2] + "ying"
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")) and len(base) > 2:
        return base[:-1] + "ing"
    return base + "ing"


@dataclass(frozen=True)
class Noun:
    """A noun phrase in singular and plural, e.g. "watering can" / "watering cans"."""

    one: str
    many: str


def parse_noun(spec: str) -> Noun:
    """Turn a noun spec ("knife:knives", "toy boat") into singular and plural."""
    one, _, many = spec.partition(":")
    return Noun(one, many or regular_plural(one))


def regular_plural(phrase: str) -> str:
    """Plural of the last word: box -> boxes, cherry -> cherries, toy boat -> toy boats."""
    head, _, last = phrase.rpartition(" ")
    prefix = head + " " if head else ""
    if last.endswith(("s", "sh", "ch", "x", "z")):
        return prefix + last + "es"
    if last.endswith("y") and last[-2:-1] not in VOWELS:
        return prefix + last[:-1] + "ies"
    return prefix + last + "s"


def with_article(phrase: str) -> str:
    """Prefix "a" or "an" by the sound of the first word (an owl, a unicorn, an hour)."""
    first = phrase.split()[0].lower()
    if first.startswith(("uni", "use", "one", "eu", "uku")):
        return "a " + phrase
    if first.startswith(("hour", "honest", "heir")) or first[0] in VOWELS:
        return "an " + phrase
    return "a " + phrase


def capitalize(text: str) -> str:
    """Upper-case the first letter only ("the red kite" -> "The red kite")."""
    return text[:1].upper() + text[1:]


def number_in_words(n: int) -> str:
    """1..99 in words: 7 -> "seven", 42 -> "forty-two"."""
    if n <= 20:
        return NUMBER_WORDS[n]
    tens, ones = divmod(n, 10)
    return TENS_WORDS[tens] + ("-" + NUMBER_WORDS[ones] if ones else "")


def plural_count(n: int, noun: Noun, *, spelled: bool) -> str:
    """"one apple", "3 apples", "twelve apples"."""
    count = number_in_words(n) if spelled else str(n)
    return f"{count} {noun.one if n == 1 else noun.many}"


def parse_nouns(specs: list[str]) -> list[Noun]:
    return [parse_noun(spec) for spec in specs]


def parse_verbs(specs: list[str]) -> list[Verb]:
    return [parse_verb(spec) for spec in specs]


PET_KIND_NOUNS = parse_nouns(PET_KINDS)
WILD_NOUNS = parse_nouns(WILD_ANIMALS + MORE_ANIMALS)
BIRD_NOUNS = parse_nouns(BIRDS)
INSECT_NOUNS = parse_nouns(INSECTS)
FLOWER_NOUNS = parse_nouns(FLOWERS)
COUNT_FOOD_NOUNS = parse_nouns(COUNT_FOODS)
TOY_NOUNS = parse_nouns(TOYS)
TOOL_NOUNS = parse_nouns(TOOLS)
CLOTHES_NOUNS = parse_nouns(CLOTHES)
HOUSEHOLD_NOUNS = parse_nouns(HOUSEHOLD)
TREASURE_NOUNS = parse_nouns(TREASURES)
OUTDOOR_NOUNS = parse_nouns(OUTDOOR_PLACES)
SHOP_NOUNS = parse_nouns(SHOPS)
OCCUPATION_NOUNS = parse_nouns(OCCUPATIONS)
MATERIAL_NOUNS = parse_nouns(CRAFT_MATERIALS)
PLANT_NOUNS = parse_nouns(PLANTS_TO_GROW)
ALL_ANIMAL_NOUNS = WILD_NOUNS + BIRD_NOUNS + INSECT_NOUNS + PET_KIND_NOUNS
SMALL_TOOL_NOUNS = [n for n in TOOL_NOUNS if n.one in (
    "compass", "flashlight", "lantern", "telescope", "magnifying glass", "paintbrush",
    "pencil", "notebook", "torch", "map", "whistle", "thimble", "fishing rod")]
LOSABLE_NOUNS = TOY_NOUNS + CLOTHES_NOUNS + TREASURE_NOUNS + SMALL_TOOL_NOUNS
CRAFT_NOUNS = TOY_NOUNS + CLOTHES_NOUNS + [n for n in HOUSEHOLD_NOUNS if n.one in (
    "cup", "mug", "plate", "bowl", "vase", "quilt", "rug", "pillow", "blanket", "candle",
    "lamp", "box", "postcard", "painting", "stool", "bench", "curtain", "jar")]

ACTIVITY_VERBS = parse_verbs(ACTIVITIES)
MOVE_VERBS = parse_verbs(MOVES)
HANDLE_VERB_FORMS = parse_verbs(HANDLE_VERBS)
CLEAN_VERB_FORMS = parse_verbs(CLEAN_VERBS)
TIDY_VERB_FORMS = parse_verbs(TIDY_VERBS)
FOOD_VERB_FORMS = parse_verbs(FOOD_VERBS)
ANIMAL_VERB_FORMS = parse_verbs(ANIMAL_VERBS)
MENTAL_VERB_FORMS = parse_verbs(MENTAL_VERBS)
REACTION_FORMS = parse_verbs(REACTIONS)
BIRD_ACTION_FORMS = parse_verbs(BIRD_ACTIONS)
EAT_VERB_FORMS = parse_verbs(EAT_VERBS)
BODY_PART_NOUNS = parse_nouns(BODY_PARTS)
SOUND_OF = {kind: parse_verb(verb) for kind, verb in ANIMAL_SOUNDS.items()}
PET_SOUND_OF = {kind: parse_verb(verb) for kind, verb in PET_SOUNDS.items()}


# ---------------------------------------------------------------------------
# Slots: a dict of story facts that also invents fresh random words on demand.
# ---------------------------------------------------------------------------


def _pick_noun(nouns, plural=False):
    return lambda rng: (rng.choice(nouns).many if plural else rng.choice(nouns).one)


def _pick_verb(verbs, form):
    return lambda rng: getattr(rng.choice(verbs), form)


def _pick(items):
    return lambda rng: rng.choice(items)


def _sounding_animal(rng: random.Random) -> str:
    """ "a dog barked" style clause with a matching sound verb."""
    kind = rng.choice(list(ANIMAL_SOUNDS))
    return f"{with_article(kind)} {SOUND_OF[kind].past}"


def _origin(rng: random.Random) -> str:
    """ "came from Peru, had taught {him} a few words of Spanish" (country and language agree)."""
    country, language = rng.choice(COUNTRY_LANGUAGES)
    return f"came from {country}, had taught {{him}} a few words of {language}"


def _story_number(rng: random.Random) -> str:
    n = rng.randint(2, 60)
    return str(n) if rng.random() < 0.5 else number_in_words(n)


RANDOM_SLOTS = {
    # adjectives and adverbs
    "color": _pick(COLORS), "size": _pick(SIZES), "quality": _pick(QUALITIES),
    "feeling": _pick(FEELINGS), "trait": _pick(TRAITS), "flaw": _pick(FLAWS),
    "weather": _pick(WEATHERS), "adverb": _pick(ADVERBS), "praise": _pick(PRAISE),
    # time and numbers
    "weekday": _pick(WEEKDAYS), "month": _pick(MONTHS), "season": _pick(SEASONS),
    "hour": lambda rng: str(rng.randint(1, 12)),
    "hour_word": lambda rng: NUMBER_WORDS[rng.randint(1, 12)],
    "small_number": lambda rng: NUMBER_WORDS[rng.randint(2, 9)],
    "number": _story_number, "digits": lambda rng: str(rng.randint(2, 99)),
    "ordinal": lambda rng: ORDINALS[rng.randint(2, 12)],
    # nouns (a plural slot name ends in "s")
    "animal": _pick_noun(WILD_NOUNS), "animals": _pick_noun(WILD_NOUNS, True),
    "bird": _pick_noun(BIRD_NOUNS), "birds": _pick_noun(BIRD_NOUNS, True),
    "insect": _pick_noun(INSECT_NOUNS), "sounding_animal": _sounding_animal,
    "flower": _pick_noun(FLOWER_NOUNS), "flowers": _pick_noun(FLOWER_NOUNS, True),
    "tree": _pick(TREES), "food": _pick_noun(COUNT_FOOD_NOUNS),
    "foods": _pick_noun(COUNT_FOOD_NOUNS, True), "mass_food": _pick(MASS_FOODS), "drink": _pick(DRINKS),
    "toy": _pick_noun(TOY_NOUNS), "toys": _pick_noun(TOY_NOUNS, True), "tool": _pick_noun(TOOL_NOUNS),
    "clothing": _pick_noun(CLOTHES_NOUNS), "household": _pick_noun(HOUSEHOLD_NOUNS),
    "treasure": _pick_noun(TREASURE_NOUNS), "treasures": _pick_noun(TREASURE_NOUNS, True),
    "spot": _pick(FURNITURE_SPOTS), "seat": _pick(SEATS), "room": _pick(HOUSE_ROOMS),
    "outdoor": _pick_noun(OUTDOOR_NOUNS), "outdoors": _pick_noun(OUTDOOR_NOUNS, True),
    "shop": _pick_noun(SHOP_NOUNS), "job": _pick_noun(OCCUPATION_NOUNS), "jobs": _pick_noun(OCCUPATION_NOUNS, True),
    "body_part": _pick_noun(BODY_PART_NOUNS), "instrument": _pick(INSTRUMENTS), "language": _pick(LANGUAGES),
    "country": _pick(COUNTRIES), "origin": _origin, "event": _pick(EVENTS), "contest": _pick(CONTESTS),
    "material": _pick(MASS_MATERIALS),
    # verbs: base form, "_s"/"s" he-form, "_past", "_ing", and participles ("eaten", "reacted")
    "activity": _pick_verb(ACTIVITY_VERBS, "base"), "activity_ing": _pick_verb(ACTIVITY_VERBS, "ing"),
    "activity_s": _pick_verb(ACTIVITY_VERBS, "third"), "activity_pp": _pick_verb(ACTIVITY_VERBS, "participle"),
    "move_past": _pick_verb(MOVE_VERBS, "past"), "move_ing": _pick_verb(MOVE_VERBS, "ing"),
    "moves": _pick_verb(MOVE_VERBS, "third"),
    "handle_past": _pick_verb(HANDLE_VERB_FORMS, "past"), "handle_ing": _pick_verb(HANDLE_VERB_FORMS, "ing"),
    "handles": _pick_verb(HANDLE_VERB_FORMS, "third"),
    "clean_past": _pick_verb(CLEAN_VERB_FORMS, "past"),
    "tidy": _pick_verb(TIDY_VERB_FORMS, "base"), "tidies": _pick_verb(TIDY_VERB_FORMS, "third"),
    "prep_past": _pick_verb(FOOD_VERB_FORMS, "past"), "preps": _pick_verb(FOOD_VERB_FORMS, "third"),
    "eat_past": _pick_verb(EAT_VERB_FORMS, "past"), "eats": _pick_verb(EAT_VERB_FORMS, "third"),
    "eaten": _pick_verb(EAT_VERB_FORMS, "participle"),
    "pet_verb": _pick_verb(ANIMAL_VERB_FORMS, "base"), "pet_verbs": _pick_verb(ANIMAL_VERB_FORMS, "third"),
    "mental": _pick_verb(MENTAL_VERB_FORMS, "base"), "mental_past": _pick_verb(MENTAL_VERB_FORMS, "past"),
    "react_past": _pick_verb(REACTION_FORMS, "past"), "react_ing": _pick_verb(REACTION_FORMS, "ing"),
    "reacts": _pick_verb(REACTION_FORMS, "third"), "reacted": _pick_verb(REACTION_FORMS, "participle"),
    "bird_act_past": _pick_verb(BIRD_ACTION_FORMS, "past"), "bird_act_ing": _pick_verb(BIRD_ACTION_FORMS, "ing"),
    "bird_acts": _pick_verb(BIRD_ACTION_FORMS, "third"),
    "say": _pick(SPEECH_TAGS_STATEMENT), "ask": _pick(SPEECH_TAGS_QUESTION),
}


class Slots(dict):
    """Story facts (hero, town, object, ...) plus random words made up on demand.

    Templates are filled with ``str.format_map``.  A key that is a story fact
    returns the same value every time (coherence); a key from ``RANDOM_SLOTS``
    returns a fresh random word every time it appears (variety).  Prefixes:
    ``a_`` adds an article ("a_animal" -> "an otter"), ``C_`` capitalises.
    """

    def __init__(self, rng: random.Random, facts: dict[str, str]):
        super().__init__(facts)
        self.rng = rng

    def __missing__(self, key: str) -> str:
        if key.startswith("C_"):
            return capitalize(self[key[2:]])
        if key.startswith("a_"):
            return with_article(self[key[2:]])
        maker = RANDOM_SLOTS.get(key)
        if maker is None:
            raise KeyError(f"unknown template slot {{{key}}}")
        return maker(self.rng)

    def fill(self, template: str) -> str:
        """Fill a template; repeat because a slot's value may contain slots itself."""
        text = template
        for _ in range(4):
            if "{" not in text:
                break
            text = text.format_map(self)
        return text

    def pick(self, templates: list[str]) -> str:
        """Fill one template chosen at random from ``templates``."""
        return self.fill(self.rng.choice(templates))

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability


# ---------------------------------------------------------------------------
# The cast: chosen once per story, so names, pronouns and places stay consistent.
# ---------------------------------------------------------------------------

PRONOUNS = {
    "she": {"he": "she", "He": "She", "him": "her", "his": "her", "His": "Her", "himself": "herself", "kid": "girl"},
    "he": {"he": "he", "He": "He", "him": "him", "his": "his", "His": "His", "himself": "himself", "kid": "boy"},
}


def pick_person(rng: random.Random, avoid: str = "") -> tuple[str, str]:
    """A child's first name and the matching pronoun key ("he"/"she")."""
    while True:
        roll = rng.random()
        if roll < ACCENTED_NAME_SHARE:
            gender = rng.choice(["she", "he"])
            name = rng.choice(ACCENTED_GIRL_NAMES if gender == "she" else ACCENTED_BOY_NAMES)
        elif roll < 0.12:
            name, gender = rng.choice(NEUTRAL_NAMES), rng.choice(["she", "he"])
        elif roll < 0.56:
            name, gender = rng.choice(GIRL_NAMES), "she"
        else:
            name, gender = rng.choice(BOY_NAMES), "he"
        if name != avoid:
            return name, gender


def pick_first_name(rng: random.Random, gender: str, avoid: str = "") -> str:
    """A first name that matches ``gender`` (so we never get "Uncle Nessa")."""
    while True:
        name, name_gender = pick_person(rng, avoid)
        if name_gender == gender:
            return name


def pick_adult(rng: random.Random, avoid: str = "") -> tuple[str, str]:
    """A grown-up helper or recipient: a relative, a neighbour or a named tradesperson."""
    kind = rng.randint(0, 3)
    if kind == 0:
        return rng.choice(RELATIVES_FEMALE), "she"
    if kind == 1:
        return rng.choice(RELATIVES_MALE), "he"
    gender = rng.choice(["she", "he"])
    title = {"she": rng.choice(["Mrs.", "Ms.", "Miss", "Aunt", "Doctor"]),
             "he": rng.choice(["Mr.", "Uncle", "Captain", "Doctor"])}[gender]
    if title in ("Aunt", "Uncle"):
        return f"{title} {pick_first_name(rng, gender, avoid)}", gender
    surname = rng.choice(SURNAMES)
    return f"{title} {surname}", gender


def make_town_name(rng: random.Random) -> str:
    return rng.choice(TOWN_PARTS_FIRST) + rng.choice(TOWN_PARTS_LAST)


def describe_object(rng: random.Random, noun: Noun) -> dict[str, str]:
    """Facts about the story's central object, so it can be named consistently."""
    color, size, quality = rng.choice(COLORS), rng.choice(SIZES), rng.choice(QUALITIES)
    return {
        "obj_noun": noun.one,
        "obj_nouns": noun.many,
        "obj": f"{color} {noun.one}",
        "obj_long": f"{size} {color} {noun.one}",
        "obj_fancy": f"{quality} {color} {noun.one}",
    }


def make_cast(rng: random.Random) -> dict[str, str]:
    """Choose everything that must stay the same for the whole story.

    ``write_story`` calls this first, so ``make_cast(story_rng(spec, i))``
    recovers the cast of story ``i`` (the tests use this).
    """
    hero, hero_gender = pick_person(rng)
    friend, friend_gender = pick_person(rng, avoid=hero)
    adult, adult_gender = pick_adult(rng, avoid=hero)
    pet_kind = rng.choice(PET_KIND_NOUNS).one
    facts = {
        "hero": hero, "friend": friend, "adult": adult, "Adult": capitalize(adult),
        "pet": rng.choice(PET_NAMES), "pet_kind": pet_kind,
        "pet_sound": PET_SOUND_OF[pet_kind].base, "pet_sound_past": PET_SOUND_OF[pet_kind].past,
        "town": make_town_name(rng), "age": str(rng.randint(5, 12)),
        "the_season": rng.choice(SEASONS), "the_weekday": rng.choice(WEEKDAYS),
        "street": f"{rng.choice(TREES).capitalize()} {rng.choice(['Street', 'Lane', 'Road', 'Avenue', 'Close', 'Row'])}",
        "house_number": str(rng.randint(1, 120)),
    }
    facts["age_words"] = number_in_words(int(facts["age"]))
    facts.update(PRONOUNS[hero_gender])
    facts.update({"f" + key: value for key, value in PRONOUNS[friend_gender].items()})
    facts.update({"a" + key: value for key, value in PRONOUNS[adult_gender].items()})
    return facts


# ---------------------------------------------------------------------------
# Dialogue.  A line is (text, end mark); tags are placed in several styles.
# ---------------------------------------------------------------------------


def quote(slots: Slots, speaker: str, line: str, mood: str = "") -> str:
    """Render one line of dialogue with a speech tag in one of several styles.

    ``line`` is a template ending in ".", "!" or "?"; statements get "said"-like
    tags, questions get "asked"-like tags, sometimes with an adverb.  Lines
    with a ``mood`` ("happy"/"sad") sometimes end with a matching emoji.
    """
    text = slots.fill(line)
    body, mark = text[:-1], text[-1]
    if mark not in ".!?":
        body, mark = text, "."
    if mood and mark != "?" and slots.chance(EMOJI_SHARE):
        body, mark = body + mark, " " + slots.rng.choice(EMOJIS[mood])
    tag = slots["ask"] if mark == "?" else slots["say"]
    adverb = " " + slots["adverb"] if slots.chance(0.2) else ""
    inner = body + ("," if mark == "." else mark)
    style = slots.rng.randint(0, 2)
    if style == 0:
        return f'"{inner}" {tag} {speaker}{adverb}.'
    if style == 1:
        return f'"{inner}" {speaker} {tag}{adverb}.'
    return f'{speaker} {tag}{adverb}, "{body}{mark}"'


def conversation(slots: Slots, turns: list[tuple[str, list[str]]]) -> str:
    """A short exchange: each turn is (speaker slot, candidate line templates).

    Sometimes a line of present-tense small talk is added at the end.
    """
    lines = []
    for speaker, options in turns:
        line = slots.rng.choice(options)
        lines.append(quote(slots, slots[speaker], line, MOOD_OF_LINE.get(line, "")))
    if slots.chance(0.3):
        speaker = slots[slots.rng.choice(["hero", "friend"])]
        lines.append(quote(slots, speaker, slots.rng.choice(CHATTER)))
    return " ".join(lines)


# ---------------------------------------------------------------------------
# Sentence pools shared by all plots.
# ---------------------------------------------------------------------------

OPENINGS = [
    "Once upon a time, in a town called {town}, there lived {a_trait} {kid} named {hero}.",
    "{hero} was {a_trait} {kid} who lived in {town}.",
    "In the little town of {town}, there was {a_kid} called {hero}.",
    "{hero} was {age_words} years old and lived with {his} {family} in {town}.",
    "Not long ago, in {town}, {a_trait} {kid} named {hero} woke up early on {a_weather} {the_weekday} morning.",
    "Every morning, {hero} looked out of {his} window at the {outdoors} of {town}.",
    "This is a story about {hero}, {a_trait} {kid} from {town}.",
    "It was {a_weather} day in {town}, and {hero} was feeling {feeling}.",
    "{hero} lived at number {house_number} {street}, right in the middle of {town}.",
    "On the edge of {town}, between the {outdoor} and the {outdoor}, lived {a_kid} named {hero}.",
    "There once was {a_kid} named {hero} who loved to {activity} more than anything.",
    "When {hero} was {age} years old, {his} family moved to {town}.",
    "{hero} and {his} {pet_kind}, {pet}, lived in {a_color} house in {town}.",
    "In {town}, {the_season} was {hero}'s favorite time of the year.",
    "Long ago, in a village called {town}, lived {a_kid} named {hero} and {a_pet_kind} named {pet}.",
    "{hero} was {age} and {trait}, and {he} knew every {outdoor} in {town}.",
]

DESCRIPTIONS = [
    "{He} liked to {activity} and to {activity}.",
    "{His} best friend was {friend}, who lived {nearby}.",
    "{He} had {a_trait} {pet_kind} named {pet}.",
    "{pet} the {pet_kind} followed {him} everywhere.",
    "{His} favorite food was {mass_food}, especially on {weekday}s.",
    "{He} was {trait} and {trait}, but sometimes a little {flaw}.",
    "Every {weekday}, {he} visited {adult} at the {shop}.",
    "{His} room was full of {toys}, {toys} and old books about {animals}.",
    "In the {the_season}, the {tree} trees in {town} turned {color}.",
    "{His} house had {a_color} door and a garden full of {flowers}.",
    "{He} wanted to be {a_job} when {he} grew up.",
    "On most days, {he} would {activity} with {friend} after school.",
    "Near {his} house there was {a_outdoor}, where {birds} sang in the mornings.",
    "{He} kept {his} {treasures} in {a_quality} box under the bed.",
    "{hero}'s {pet_kind}, {pet}, liked to sleep in the sun by the {spot}.",
    "{He} was good at {activity_ing}, but not so good at {activity_ing}.",
    "{His} neighbor, {adult}, was {a_job} and always had a story to tell.",
    "People on {street} said that {hero} was a very {trait} {kid}.",
    "{His} favorite season was {season}, because then {he} could {activity}.",
    "Last {season}, {he} had entered {a_contest} and come {ordinal}.",
    "{He} had a collection of {digits} {treasures} and one very special {treasure}.",
    "Every {weekday}, {he} helped {adult} {tidy} the {shop}.",
    "{His} {relative}, who {origin}.",
    "{Adult} had once traveled to {country} and brought back {a_treasure}.",
    "{He} always {eat_past} {a_food} before school.",
    "{He} dreamed of seeing {a_animal} one day.",
    "On {his} bedroom wall hung a picture of {a_animal} and {a_flower}.",
    "The day before, {he} had {activity_pp} with {friend} until dinner.",
    "{He} had never {activity_pp} before, but {he} wanted to try.",
]

# Small moments dropped into the middle of a plot, for variety.  They must fit
# anywhere in any plot, so they only use the cast and random scenery.
INTERLUDES = [
    "{friend} {react_past} and {react_past}.",
    "{pet} {react_past}, then lay down again.",
    "{hero} rubbed {his} {body_part} and {react_past}.",
    "{C_a_bird} {bird_act_past} over the {outdoor}.",
    "High above, two {birds} {bird_act_past} and called to each other.",
    "{hero}'s {body_part} was starting to hurt, but {he} did not stop.",
    "{He} thought of {adult}, who was probably {activity_ing} at home.",
    "For a moment, nobody said anything. Then {friend} {react_past}.",
    "{He} {eat_past} {a_food} to get some energy.",
    "On the way, {hero} passed {a_job} who was {handle_ing} {a_household}.",
    "Deep down, {hero} {mental_past} that everything would be all right.",
    "Far away, the {jobs} and {jobs} of {town} were getting ready for the {event}.",
    "A smell of {mass_food} was coming from the {shop}.",
    "{He} counted {digits} {animals} on the way, and {small_number} {birds}.",
    "{pet} was {react_ing} in the corner.",
    "It was already {hour} o'clock.",
    "{C_a_size} {insect} was {bird_act_ing} near the {flowers}.",
    "Somewhere, somebody was playing the {instrument}.",
    "{friend} said that {fhis} {relative} had once been to {country}.",
    "{He} was so {feeling} that {his} knees were shaking.",
    "{C_a_animal} watched them from behind {a_tree} tree.",
    "{He} stopped to {pet_verb} {pet} for a moment.",
    "Later, they {prep_past} some {foods} and {eat_past} them together.",
    "{friend} {handle_past} the {tool} and {react_past}.",
    "{C_a_job} {move_past} past with {a_quality} {toy} under one arm.",
    "The clock on the {shop} struck {hour_word}.",
]

# Present-tense small talk, so the model also sees "flies", "sweeps", "eats".
CHATTER = [
    "My {relative} {activity_s} every {weekday}.",
    "Look! {C_a_bird} {bird_acts} over the {outdoor}!",
    "{pet} always {reacts} when it is {feeling}.",
    "{Adult} {tidies} the {shop} every {weekday}.",
    "Everybody in {town} {moves} to the {outdoor} on {weekday}s.",
    "My cousin {eats} {foods} every morning.",
    "Nobody {preps} {foods} like {adult}.",
    "I {mental} that we will be fine.",
    "Have you ever {eaten} {a_food}?",
    "I have never {reacted} so much in my life!",
    "{Adult} {handles} everything so {adverb}.",
    "A {job} {pet_verbs} the {animals} at the {outdoor} every {weekday}.",
]

NEARBY = phrases("""
    next door | across the street | on the other side of the {outdoor} | above the {shop} |
    two houses down | at the end of {street} | by the {outdoor} | past the {outdoor} |
    just around the corner | behind the {shop}
""")

SCENERY = [
    "The sun was shining over the {outdoors}.",
    "{C_a_weather} wind blew through the {tree} trees.",
    "Somewhere nearby, {sounding_animal}.",
    "{C_a_bird} sat on a fence and watched them.",
    "The air smelled of {flowers} and fresh {mass_food}.",
    "Clouds drifted over the {outdoor} like {color} sheep.",
    "{C_a_size} {insect} landed on a leaf and flew away again.",
    "The {outdoor} was quiet except for the {birds}.",
    "It was {number} minutes past {hour_word}, and the shadows were getting long.",
    "Far away, a bell rang {small_number} times.",
    "Two {animals} were playing near the {outdoor}.",
    "The streets of {town} were busy with people going to the {shop}.",
    "{C_weather} weather had come to {town} that week.",
    "Little {flowers} grew by the side of the path.",
]

PET_MOMENTS = [
    "{pet} {pet_sound_past} and ran around {his} feet.",
    "{pet} the {pet_kind} watched everything with wide, curious eyes.",
    "Even {pet} seemed to know that something was wrong.",
    "{pet} sniffed the air and ran ahead.",
    "{pet} curled up next to {hero} and looked {feeling}.",
    "{hero} gave {pet} a little {mass_food}... just to keep {pet} quiet.",
    "{pet} made {a_size} happy sound.",
]

FEELING_LINES = [
    "{hero} felt {feeling}.",
    "{He} was {feeling}, but also a little {feeling}.",
    "{hero}'s heart was beating fast.",
    "{He} took a deep breath and tried to stay calm.",
    "For a moment, {hero} did not know what to do.",
    "{He} sat down on {seat} and thought very hard.",
    "{He} thought about it for a long time.",
    "{He} wondered what {adult} would say.",
]

LUCKY_HELP = [
    "Luckily, {friend} knew a shortcut through the {outdoor}.",
    "Just then, {friend} came {move_ing} down the road.",
    "Then {hero} had an idea.",
    "After a while, {adult} came out to see what was happening.",
    "Then {hero} remembered something {adult} had once told {him}.",
    "Suddenly, {pet} started to {pet_sound} and run in circles.",
    "At that moment, {a_job} with {a_size} {tool} walked by.",
]

ENDINGS = [
    "That night, {hero} fell asleep with a big smile.",
    "It was the best {the_weekday} {hero} could remember.",
    "{hero} would never forget that {the_season}.",
    "And from that day on, {hero} and {friend} were the best of friends.",
    "Everyone in {town} talked about it for weeks.",
    "{hero} went home, tired but {feeling}.",
    "When the sun went down over {town}, {hero} was already dreaming of the next adventure.",
    "{pet} the {pet_kind} seemed very proud too.",
    "The End.",
    "Later, {hero} wrote the whole story in {his} diary.",
    "{Adult} said it was the {ordinal} time that week that {hero} had made {ahim} smile.",
]

MORAL_LINES = [
    "{hero} learned that {moral}.",
    "That day, {hero} understood that {moral}.",
    "And so {hero} learned an important lesson: {moral}.",
    "{Adult} smiled and said, \"You see? {C_moral}.\"",
]

# Cause-and-effect sentence shapes.  {cause} is a clause, {effect} a verb phrase.
CAUSE_EFFECT = [
    "Because {cause}, {hero} had to {effect}.",
    "{C_cause}, so {hero} had to {effect}.",
    "Since {cause}, {hero} decided to {effect}.",
    "Unfortunately, {cause}. That meant {hero} had to {effect}.",
    "{hero} soon found out that {cause}. As a result, {he} had to {effect}.",
    "But there was a problem: {cause}. {hero} would have to {effect}.",
    "Oh no! {C_cause}. There was nothing to do but {effect}.",
    "{C_cause}; {hero} sighed and got ready to {effect}.",
]

TRAVEL_OBSTACLES = [
    ("the old bridge over the river was broken", "walk all the way around the lake"),
    ("a storm had knocked {a_tree} tree across the road", "climb over the wet branches"),
    ("the river was too deep to cross", "borrow a little boat from {adult}"),
    ("the gate to the {outdoor} was locked", "find another way in"),
    ("it started to rain very hard", "wait under {a_tree} tree until the rain stopped"),
    ("the path was covered in thick mud", "take off {his} shoes and walk very slowly"),
    ("{his} bicycle had a flat tire", "walk the whole way"),
    ("the bus was {number} minutes late", "run to the next stop"),
    ("a grumpy goose was standing in the middle of the path", "go the long way round"),
    ("thick fog covered the whole {outdoor}", "follow the sound of the church bells"),
    ("the wind was blowing very hard", "hold on tight to everything {he} carried"),
    ("the snow was deeper than {his} boots", "march through it one step at a time"),
    ("{his} map was torn in half", "ask {a_job} for directions"),
    ("the tunnel under the hill was very dark", "light a small lantern"),
    ("the hill was very steep", "stop and rest {small_number} times"),
    ("a swarm of bees buzzed around the path", "wait very quietly until they left"),
    ("the last train to the {outdoor} had already left", "ask {adult} for a ride"),
    ("the road was closed for repairs", "take the narrow path through the {outdoor}"),
    ("a herd of {animals} was blocking the lane", "wait until the {animals} wandered away"),
    ("the ferry was not running that day", "cross the old stepping stones"),
]

HOME_OBSTACLES = [
    ("the attic door was stuck", "push it with all {his} strength"),
    ("it was getting dark", "find a flashlight"),
    ("the garden was full of tall grass", "search on {his} hands and knees"),
    ("the top shelf was far too high", "stand on a wobbly stool"),
    ("{his} little cousin had made a terrible mess", "tidy the whole {room} first"),
    ("the lights went out in the whole house", "light a candle"),
    ("{pet} kept getting in the way", "shut {pet} in the {room} for a while"),
    ("the cupboard was locked and the key was missing", "ask {adult} for help"),
]

MAKING_OBSTACLES = [
    ("the glue would not stick", "use string instead"),
    ("{he} ran out of {material}", "go to the {shop} to buy more"),
    ("{pet} knocked everything off the table", "start again from the beginning"),
    ("the paint was still wet", "wait a whole hour"),
    ("the scissors were too blunt", "borrow a better pair from {friend}"),
    ("one of the pieces was missing", "make a new one out of {material}"),
    ("the wind blew the paper away", "chase it across the {outdoor}"),
    ("there was not enough time", "work late into the evening"),
]

GROWING_OBSTACLES = [
    ("there was no rain for {number} days", "carry water from the well every morning"),
    ("snails ate the young leaves", "build a little fence out of sticks"),
    ("a rabbit kept digging in the garden", "cover the seeds with an old net"),
    ("a late frost came in {month}", "cover the plants with blankets at night"),
    ("the soil was hard and dry", "dig it over with {a_tool}"),
    ("birds pecked at the seeds", "make a scarecrow out of old clothes"),
]

SKILL_OBSTACLES = [
    ("{he} kept getting it wrong", "practice every single day"),
    ("the other children laughed at {him}", "try again when nobody was watching"),
    ("{he} felt too scared at first", "start with something very small"),
    ("it was much harder than it looked", "ask {adult} to show {him} again"),
    ("{his} hands got tired very quickly", "take short breaks"),
]


TRAVEL_CAUSE_EFFECT = CAUSE_EFFECT + [
    "{hero} could not go the usual way, because {cause}. Instead, {he} had to {effect}.",
    "Halfway there, {hero} stopped. {C_cause}! {He} would have to {effect}.",
]


def cause_and_effect(slots: Slots, obstacles: list[tuple[str, str]], shapes: list[str] = CAUSE_EFFECT) -> str:
    """One sentence linking a problem (cause) to what the hero has to do about it (effect).

    The chosen cause and effect stay in ``slots`` so later dialogue can refer to them.
    """
    cause, effect = slots.rng.choice(obstacles)
    slots["cause"] = slots.fill(cause)
    slots["effect"] = slots.fill(effect)
    return slots.pick(shapes)


def paragraph(*sentences: str) -> str:
    return " ".join(s for s in sentences if s)


def maybe(slots: Slots, probability: float, templates: list[str]) -> str:
    return slots.pick(templates) if slots.chance(probability) else ""


def opening_paragraph(slots: Slots) -> str:
    slots["family"] = slots.rng.choice(FAMILY_MEMBERS)
    slots["nearby"] = slots.fill(slots.rng.choice(NEARBY))
    extras = slots.rng.sample(DESCRIPTIONS, slots.rng.randint(1, 3))
    return paragraph(slots.pick(OPENINGS), *(slots.fill(t) for t in extras), maybe(slots, 0.3, SCENERY))


def ending_paragraph(slots: Slots) -> str:
    return paragraph(maybe(slots, 0.45, MORAL_LINES), slots.pick(ENDINGS))


# ---------------------------------------------------------------------------
# Plots.  Each returns the middle paragraphs of a story: goal, obstacle,
# dialogue, attempts and resolution.  They share the cast in ``slots``.
# ---------------------------------------------------------------------------

GREETING_LINES = [
    "What are you doing, {hero}?", "Hello, {hero}! Why do you look so {feeling}?",
    "Is everything all right?", "Can I help you?", "Where are you going in such a hurry?",
]
WORRY_LINES = [
    "What should we do now?", "Oh no, what are we going to do?", "This is a disaster!",
    "I don't think we can do it.", "Maybe we should give up.", "How will we ever manage?",
]
COMFORT_LINES = [
    "Don't worry, {hero}. We will find a way.", "I have an idea!", "Let's try again together.",
    "We can do this if we are {trait}.", "My {relative} always says that there is a way for everything.",
    "Let's not give up yet.", "Maybe we could {effect}.",
]
THANKS_LINES = [
    "Thank you, {friend}! I could not have done it without you.", "We did it!",
    "Hooray!", "That was the best day ever!", "You are the best friend in the world, {friend}.",
]
MOOD_OF_LINE: dict[str, str] = {}
"""Filled below: which dialogue lines may carry a happy or sad emoji."""

WELCOME_LINES = [
    "You are welcome, {hero}.", "That is what friends are for.", "Anytime!",
    "It was fun. Can we do it again tomorrow?", "I am so happy for you!", "I am so proud of you!",
]


MOOD_OF_LINE.update({line: "sad" for line in WORRY_LINES})
MOOD_OF_LINE.update({line: "happy" for line in THANKS_LINES + WELCOME_LINES + COMFORT_LINES})


def plot_lost_object(slots: Slots) -> list[str]:
    """Something precious goes missing; the hero searches and finds it."""
    slots.update(describe_object(slots.rng, slots.rng.choice(LOSABLE_NOUNS)))
    slots["goal"] = "find my {obj_noun}"
    slots["found_place"] = slots.fill(slots.rng.choice([
        "under the {spot}", "behind the {spot}", "inside {pet}'s basket", "in the {room}",
        "at the bottom of the laundry basket", "in the pocket of {his} old {clothing}",
        "on the windowsill in the {room}", "under a pile of leaves in the garden",
        "next to the {outdoor}, where {he} had left it", "inside the {household}",
    ]))
    goal = paragraph(
        slots.pick([
            "{hero} had {a_obj_long}. {He} loved it more than anything.",
            "{hero}'s most precious thing was {a_obj_fancy} that {adult} had given {him}.",
            "For {his} birthday, {hero} had got {a_obj} from {adult}.",
        ]),
        slots.pick([
            "But one {the_weekday} morning, the {obj_noun} was gone.",
            "One day, {he} went to get it, but it was not there.",
            "But when {he} came back from the {outdoor}, the {obj} was missing.",
            "Then, one {weather} afternoon, {hero} could not find it anywhere.",
        ]),
        slots.pick(FEELING_LINES),
    )
    talk = conversation(slots, [
        ("friend", GREETING_LINES),
        ("hero", ["I lost my {obj_noun}!", "My {obj} is gone!", "I can't find my {obj_noun} anywhere.",
                  "Have you seen my {obj}?"]),
        ("friend", ["Where did you see it last?", "When did you last have it?",
                    "Don't worry, we will find it.", "Let's look together!"]),
    ])
    search = paragraph(
        slots.pick(["{He} looked under the {spot}.", "First, {he} searched the {room}.",
                    "{hero} and {friend} looked everywhere."]),
        slots.pick(["{He} looked behind the {spot} and in the {room}.",
                    "{He} checked every {household} in the house.",
                    "{He} even looked inside the {household}."]),
        cause_and_effect(slots, HOME_OBSTACLES),
        maybe(slots, 0.5, PET_MOMENTS),
    )
    found = paragraph(
        slots.pick(LUCKY_HELP),
        slots.pick([
            "At last, {hero} found the {obj_noun} {found_place}!",
            "There it was, {found_place}: the {obj}!",
            "Finally, {friend} pointed and shouted. The {obj_noun} was {found_place}.",
            "It turned out that {pet} had carried the {obj_noun} away and hidden it {found_place}.",
        ]),
        quote(slots, slots["hero"], slots.rng.choice(THANKS_LINES), "happy"),
        quote(slots, slots["friend"], slots.rng.choice(WELCOME_LINES), "happy"),
        slots.pick(["{hero} hugged the {obj_noun} and promised to keep it somewhere safe.",
                    "From then on, {hero} always put the {obj_noun} back on {his} shelf.",
                    "{He} {clean_past} the {obj_noun} until it looked like new."]),
    )
    return [goal, talk, search, found]


def plot_delivery(slots: Slots) -> list[str]:
    """The hero must carry something to someone far away, and the way is blocked."""
    gift_kind = slots.rng.random()
    if gift_kind < 0.4:
        food = slots.rng.choice(COUNT_FOOD_NOUNS)
        count = slots.rng.randint(2, 24)
        slots["gift"] = f"a basket of {plural_count(count, food, spelled=slots.chance(0.6))}"
        slots["gift_short"] = "basket"
    else:
        slots.update(describe_object(slots.rng, slots.rng.choice(LOSABLE_NOUNS + CRAFT_NOUNS)))
        slots["gift"] = "{a_obj}"
        slots["gift_short"] = "{obj_noun}"
    recipient, gender = pick_adult(slots.rng)
    while recipient == slots["adult"]:
        recipient, gender = pick_adult(slots.rng)
    slots["recipient"] = recipient
    slots.update({"r" + key: value for key, value in PRONOUNS[gender].items()})
    slots["where"] = slots.fill(slots.rng.choice([
        "on the other side of the {outdoor}", "at the top of the hill", "near the old {outdoor}",
        "in the next village", "by the {outdoor}, far from {town}", "above the {shop}",
        "in a little cottage past the {outdoor}", "{number} miles away",
    ]))
    slots["goal"] = "take this {gift_short} to {recipient}"
    goal = paragraph(
        slots.pick([
            "One {the_weekday}, {adult} asked {hero} to take {gift} to {recipient}, who lived {where}.",
            "{recipient} was ill, and {hero} wanted to bring {rhim} {gift}. {recipient} lived {where}.",
            "It was {recipient}'s birthday, so {hero} packed {gift}. {recipient} lived {where}.",
            "{hero} had promised to deliver {gift} to {recipient} before {hour} o'clock.",
        ]),
        maybe(slots, 0.5, ["{He} put on {his} {clothing} and set off with {pet}.",
                           "{He} said goodbye and {move_past} down {street}.",
                           "{He} left at {hour} o'clock sharp."]),
    )
    trouble = paragraph(
        maybe(slots, 0.4, SCENERY),
        cause_and_effect(slots, TRAVEL_OBSTACLES, TRAVEL_CAUSE_EFFECT),
        slots.pick(FEELING_LINES),
    )
    talk = conversation(slots, [
        ("hero", WORRY_LINES),
        ("friend", COMFORT_LINES),
        ("hero", ["You are right. Let's go!", "Okay, let's try it.", "I hope this works.",
                  "We have to hurry, {recipient} is waiting!"]),
    ])
    arrive = paragraph(
        slots.pick([
            "It took them {number} minutes longer than usual, but at last they reached the door.",
            "The sun was low when {hero} finally knocked on {recipient}'s door.",
            "After a long walk, {hero} and {friend} arrived, tired and hungry.",
        ]),
        slots.pick([
            "{recipient} opened the door and smiled. \"What a lovely surprise!\" {rhe} said.",
            "{recipient} was so {feeling} that {rhe} gave them both a cup of {drink}.",
            "When {recipient} saw the {gift_short}, {rhis} eyes filled with happy tears.",
        ]),
        maybe(slots, 0.5, ["They sat together and ate {foods} until it was dark.",
                           "{recipient} told them a story about {a_job} who lived in {town} long ago."]),
    )
    return [goal, trouble, talk, arrive]


def plot_making(slots: Slots) -> list[str]:
    """The hero makes something for an event; materials and accidents get in the way."""
    craft = slots.rng.choice(CRAFT_NOUNS)
    slots.update(describe_object(slots.rng, craft))
    slots["the_event"] = slots.rng.choice(EVENTS)
    materials = slots.rng.sample(MATERIAL_NOUNS, 2)
    needs = [plural_count(slots.rng.randint(2, 30), noun, spelled=slots.chance(0.5)) for noun in materials]
    slots["needs"] = f"{needs[0]}, {needs[1]} and some {slots.rng.choice(MASS_MATERIALS)}"
    slots["goal"] = "make {a_obj} for the {the_event}"
    goal = paragraph(
        slots.pick([
            "The {the_event} was only {small_number} days away, and {hero} wanted to make {a_obj_fancy} for it.",
            "Everyone in {town} was getting ready for the {the_event}. {hero} decided to make {a_obj}.",
            "{hero} wanted to surprise {adult} at the {the_event} with a homemade {obj_noun}.",
        ]),
        slots.pick(["{He} needed {needs}.", "For that, {he} would need {needs}.",
                    "{He} made a list: {needs}."]),
    )
    work = paragraph(
        slots.pick(["{hero} worked on it in the {room} every evening.",
                    "{He} started on {a_weather} {the_weekday} morning.",
                    "{He} spread everything out on the floor of the {room}."]),
        cause_and_effect(slots, MAKING_OBSTACLES),
        maybe(slots, 0.4, PET_MOMENTS),
    )
    talk = conversation(slots, [
        ("friend", ["What are you making?", "Is that {a_obj_noun}?", "Can I see?"]),
        ("hero", ["It is a surprise for the {the_event}.", "It is going to be {a_obj_long}!",
                  "I am making {a_obj}, but it keeps going wrong."]),
        ("friend", COMFORT_LINES + ["I can help you with the {material}.", "It already looks {praise}!"]),
    ])
    finish = paragraph(
        slots.pick([
            "Finally, the {obj_noun} was ready. It was {praise} and {praise}.",
            "On the morning of the {the_event}, the {obj} was finished.",
            "After {small_number} long evenings, {hero} held up the finished {obj_noun}.",
        ]),
        slots.pick([
            "At the {the_event}, everyone stopped to admire it.",
            "When {adult} saw it, {ahe} clapped {ahis} hands.",
            "People came from all over {town} to look at it, and {a_job} asked how {he} had made it.",
        ]),
    )
    return [goal, work, talk, finish]


def plot_rescue(slots: Slots) -> list[str]:
    """An animal is stuck; the hero and a friend work out how to help it."""
    animal = slots.rng.choice(ALL_ANIMAL_NOUNS)
    slots["creature"] = animal.one
    slots["stuck"] = slots.fill(slots.rng.choice([
        "high up in {a_tree} tree", "at the bottom of an old well", "behind the garden fence",
        "on a rock in the middle of the stream", "inside a tangle of thorny bushes",
        "under the floor of the {outdoor}", "in a deep hole near the {outdoor}",
        "on the roof of the {shop}", "in a drain pipe by the {outdoor}",
    ]))
    slots["goal"] = "help the {creature}"
    slots["rescue_tool"] = slots.rng.choice([
        "a ladder", "a long rope", "a fishing net", "a bucket", "a soft blanket", "a long stick",
        "a basket on a string", "a wooden plank", "a pair of thick gloves"])
    goal = paragraph(
        slots.pick([
            "One {weather} day, {hero} heard a small noise. {C_a_creature} was stuck {stuck}!",
            "While {he} was {activity_ing}, {hero} saw {a_creature} stuck {stuck}.",
            "{pet} started to {pet_sound} at something. It was {a_size} {creature}, stuck {stuck}.",
        ]),
        slots.pick(["The poor {creature} looked {feeling} and tired.",
                    "It could not get out on its own.", "It had been there for {number} hours."]),
    )
    talk = conversation(slots, [
        ("hero", ["We have to help it!", "Look, {friend}! The {creature} is stuck.",
                  "How did it get there?"]),
        ("friend", WORRY_LINES + ["We need {rescue_tool}.", "Let's ask {adult}."]),
    ])
    attempt = paragraph(
        slots.pick([
            "First they tried to reach it with a stick, but the stick was too short.",
            "{hero} tried to call it with a piece of {mass_food}, but it was too frightened to move.",
            "They tried to reach it, but it was too far and too slippery.",
        ]),
        cause_and_effect(slots, TRAVEL_OBSTACLES + SKILL_OBSTACLES[:2]),
        slots.pick(LUCKY_HELP),
    )
    rescue = paragraph(
        slots.pick([
            "Slowly and carefully, {hero} lifted the {creature} and set it down on the grass.",
            "With the help of {rescue_tool} and a lot of patience, they got the {creature} out.",
            "{Adult} held the ladder while {hero} climbed up and carried the {creature} down.",
        ]),
        slots.pick([
            "The {creature} looked at them for a moment and then ran off toward the {outdoor}.",
            "The {creature} was safe at last.",
            "They gave it some water and watched it go home.",
        ]),
        quote(slots, slots["friend"], slots.rng.choice(["You were so {trait}, {hero}!", "We did it!",
                                                        "I think it said thank you."]), "happy"),
    )
    return [goal, talk, attempt, rescue]


SKILLS = parse_verbs(phrases("""
    ride:rode:ridden a bicycle | swim*:swam:swum across the pond | whistle with two fingers |
    bake bread | juggle three balls | play the {instrument} | read:read:read a map |
    speak:spoke:spoken {language} | knit* a scarf | fly:flew:flown a kite | climb the rope in the gym |
    skip* stones on the lake | do:did:done a cartwheel | write:wrote:written a poem | sail a little boat |
    tie a sailor's knot | skate on the frozen pond | stand:stood:stood on {his} hands |
    make:made:made pancakes | draw:drew:drawn a horse | count to a hundred in {language} |
    ride:rode:ridden a pony | dive into the pool | sing:sang:sung in front of the whole class
"""))


def plot_learning(slots: Slots) -> list[str]:
    """The hero wants to learn a skill, fails several times and finally succeeds."""
    skill = slots.rng.choice(SKILLS)
    slots["skill"], slots["skill_ing"] = slots.fill(skill.base), slots.fill(skill.ing)
    slots["days"] = str(slots.rng.randint(3, 30))
    slots["goal"] = "learn to {skill}"
    goal = paragraph(
        slots.pick([
            "{hero} wanted to learn how to {skill}.",
            "All of {his} friends could {skill}, but {hero} could not.",
            "{Adult} said that {he} was old enough to learn to {skill}.",
            "At the {event}, {hero} saw {a_job} {skill_ing}, and {he} wanted to try it too.",
        ]),
        slots.pick(["{He} was {feeling} and {feeling} at the same time.",
                    "{He} decided to practice every day.", "It looked easy, but it was not."]),
    )
    practice = paragraph(
        slots.pick(["The first time, {he} tried and failed.",
                    "On the first day, nothing went right.",
                    "The first {small_number} times, {he} could not do it at all."]),
        cause_and_effect(slots, SKILL_OBSTACLES),
        slots.pick(["Every day for {days} days, {hero} practiced in the {outdoor}.",
                    "{He} practiced before breakfast and after dinner, for {days} days in a row.",
                    "{He} practiced until {his} arms ached."]),
    )
    talk = conversation(slots, [
        ("hero", ["I will never be able to {skill}.", "Why is it so hard?", "Can you help me?"]),
        ("friend", COMFORT_LINES + ["Everybody falls at first.", "You are getting better every day!"]),
    ])
    success = paragraph(
        slots.pick([
            "Then, on the {ordinal} day, {hero} could finally {skill}!",
            "One morning, without even thinking about it, {hero} did it.",
            "On day {days}, {hero} tried one more time, and it worked.",
        ]),
        slots.pick([
            "{friend} cheered, and {pet} jumped up and down.",
            "{Adult} clapped and called everyone to come and watch.",
            "{hero} laughed out loud. {He} could not stop smiling.",
        ]),
    )
    return [goal, practice, talk, success]


def plot_growing(slots: Slots) -> list[str]:
    """Seeds, waiting, trouble in the garden and finally a harvest."""
    plant = slots.rng.choice(PLANT_NOUNS)
    slots["plant"], slots["plants"] = plant.one, plant.many
    slots["seeds"] = str(slots.rng.randint(3, 40))
    slots["grown"] = str(slots.rng.randint(2, 30))
    slots["goal"] = "grow {plants}"
    goal = paragraph(
        slots.pick([
            "In {month}, {hero} planted {seeds} {plant} seeds in a corner of the garden.",
            "{Adult} gave {hero} a packet of {plant} seeds. There were {seeds} seeds inside.",
            "{hero} wanted to grow the biggest {plants} in {town}.",
        ]),
        slots.pick(["{He} watered them every morning.", "{He} made a little sign that said {C_plants}.",
                    "{He} checked on them every day after school."]),
    )
    trouble = paragraph(
        slots.pick(["For a while, nothing happened.", "After a week, tiny green shoots came up.",
                    "The seeds grew slowly."]),
        cause_and_effect(slots, GROWING_OBSTACLES),
    )
    talk = conversation(slots, [
        ("hero", ["Will they ever grow?", "Look, {friend}! The first leaf!", "I think they are dying."]),
        ("friend", COMFORT_LINES + ["Plants need time, just like people.", "They only need a little sun."]),
    ])
    harvest = paragraph(
        slots.pick([
            "By the end of the {the_season}, there were {grown} big {plants} in the garden.",
            "At last the {plants} were ready. {hero} counted {grown} of them.",
            "Weeks later, the garden was full of {plants}.",
        ]),
        slots.pick([
            "{He} gave some to {adult} and some to {friend}.",
            "{He} took the best one to the {shop} to show everyone.",
            "That evening, they made {mass_food} with them.",
        ]),
    )
    return [goal, trouble, talk, harvest]


def plot_contest(slots: Slots) -> list[str]:
    """A town contest: preparation, a setback, and a win or a happy loss."""
    slots["the_contest"] = slots.rng.choice(CONTESTS)
    slots["place_word"] = slots.rng.choice(["first", "first", "second", "third"])
    slots["prize"] = slots.fill("{a_color} " + slots.rng.choice(["ribbon", "medal", "cup", "rosette", "trophy"]))
    slots["entrants"] = str(slots.rng.randint(5, 40))
    slots["goal"] = "win the {the_contest}"
    goal = paragraph(
        slots.pick([
            "Every {the_season}, {town} held {a_the_contest}, and this year {hero} wanted to win it.",
            "There was going to be {a_the_contest} at the {outdoor} on {the_weekday}.",
            "{hero} had never entered the {the_contest} before, but this year {he} felt ready.",
        ]),
        slots.pick(["{entrants} children had signed up.", "The prize was {prize}.",
                    "{He} practiced with {friend} every afternoon."]),
    )
    trouble = paragraph(
        slots.pick(["On the big day, the {outdoor} was full of people.",
                    "The morning of the {the_contest} was {weather}."]),
        cause_and_effect(slots, TRAVEL_OBSTACLES[:8] + MAKING_OBSTACLES[:4]),
    )
    talk = conversation(slots, [
        ("hero", WORRY_LINES),
        ("friend", COMFORT_LINES + ["Just do your best.", "It does not matter if you win."]),
    ])
    if slots["place_word"] == "first":
        result = "When the judge read out the names, {hero} had won first place and {prize}!"
    else:
        result = "{hero} came {place_word}, out of {entrants}. {He} did not win, but {he} was {feeling} anyway."
    finish = paragraph(
        slots.fill(result),
        slots.pick(["{friend} gave {him} a big hug.", "{Adult} was the proudest person in {town}.",
                    "Everyone clapped, and {pet} {pet_sound_past} along."]),
    )
    return [goal, trouble, talk, finish]


def plot_quarrel(slots: Slots) -> list[str]:
    """Two friends argue over a thing, get upset, and make up."""
    slots.update(describe_object(slots.rng, slots.rng.choice(TOY_NOUNS)))
    slots["goal"] = "play with the {obj_noun}"
    start = paragraph(
        slots.pick([
            "{hero} and {friend} both wanted to play with the {obj} at the same time.",
            "One {weather} afternoon, {friend} came over to play with {hero}'s {obj_long}.",
            "{hero} had a new {obj_noun}, and {friend} wanted to try it too.",
        ]),
    )
    argue = conversation(slots, [
        ("hero", ["It is mine!", "You can't have it!", "I had it first!", "Give it back!"]),
        ("friend", ["But I only want to try it once!", "That is not fair!", "You never share anything!"]),
    ])
    turn = paragraph(
        slots.pick([
            "{friend} went home, and {hero} played alone. But it was not fun at all.",
            "They both pulled, and the {obj_noun} fell to the ground with a crack.",
            "{friend} stopped talking and looked at the floor.",
        ]),
        slots.pick(FEELING_LINES),
        maybe(slots, 0.5, ["Because {hero} had been {flaw}, now nobody was happy.",
                           "Since nobody would share, nobody could play."]),
    )
    makeup = paragraph(
        quote(slots, slots["hero"], slots.rng.choice(["I am sorry, {friend}.", "Let's take turns.",
                                                       "You can go first this time."]), "happy"),
        quote(slots, slots["friend"], slots.rng.choice(["I am sorry too.", "Thank you, {hero}!",
                                                         "Let's play together."]), "happy"),
        slots.pick(["From then on, they took turns, {small_number} minutes each.",
                    "They played with the {obj_noun} together until it was time for dinner.",
                    "Together they {clean_past} the {obj_noun} and made it look new."]),
    )
    return [start, argue, turn, makeup]


PLOTS = [plot_lost_object, plot_delivery, plot_making, plot_rescue,
         plot_learning, plot_growing, plot_contest, plot_quarrel]

TITLES = [
    "The {C_obj_noun}", "{hero} and the {C_obj_noun}", "A Day in {town}", "{hero}'s Big Day",
    "The {C_the_season} Adventure", "{hero} and {friend}", "How {hero} Learned a Lesson",
]


PET_INTROS = [
    "{He} had {a_trait} {pet_kind} named {pet}.",
    "{hero} lived with {his} {pet_kind}, {pet}.",
    "{pet} was {hero}'s {pet_kind}, and a very {trait} one.",
]
FRIEND_INTROS = [
    "{His} best friend was {friend}, who lived {nearby}.",
    "{He} spent most afternoons with {his} friend {friend}.",
    "{friend}, {his} best friend, lived {nearby}.",
]


def mentions(text: str, name: str) -> bool:
    """Whether ``name`` occurs as a whole word ("Ash" is not in "Ashmore")."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def introductions(slots: Slots, opening: str, rest: str) -> list[str]:
    """Sentences that introduce the pet and the friend in the opening, if the plot uses them.

    Without this a friend could first appear as a speaker in a dialogue tag,
    which reads oddly and teaches the model that names come from nowhere.
    """
    extra = []
    if mentions(rest, slots["pet"]) and not mentions(opening, slots["pet"]):
        extra.append(slots.pick(PET_INTROS))
    if mentions(rest, slots["friend"]) and not mentions(opening, slots["friend"]):
        extra.append(slots.pick(FRIEND_INTROS))
    return extra


def write_story(rng: random.Random) -> str:
    """One complete story: opening, plot paragraphs, ending; sometimes a title."""
    slots = Slots(rng, make_cast(rng))
    slots["relative"] = rng.choice(["grandma", "grandpa", "mom", "dad", "aunt", "teacher"])
    slots["effect"] = "ask {adult} for help"
    plot = rng.choice(PLOTS)
    slots["moral"] = rng.choice(MORALS_BY_PLOT[plot.__name__] + GENERIC_MORALS)
    opening = opening_paragraph(slots)
    middle = [paragraph(p, maybe(slots, 0.35, INTERLUDES)) for p in plot(slots)]
    ending = ending_paragraph(slots)
    rest = "\n".join(middle + [ending])
    opening = paragraph(opening, *introductions(slots, opening, rest))
    parts = [opening, *middle, ending]
    if rng.random() < 0.3:
        titles = [t for t in TITLES if "obj_noun" in slots or "obj_noun" not in t]
        parts.insert(0, slots.pick(titles))
    return "\n".join(part for part in parts if part)


# ---------------------------------------------------------------------------
# Splits, files and statistics.
# ---------------------------------------------------------------------------


def story_rng(spec: SplitSpec, index: int) -> random.Random:
    """An independent, platform-stable random stream for story ``index`` of a split."""
    return random.Random(f"{spec.seed}:{index}")


def generate_stories(split: str, count: int | None = None) -> list[str]:
    """Stories of a split, in order: the first ``count``, or enough to reach its size target."""
    spec = SPLITS[split]
    stories: list[str] = []
    total = 0
    index = 0
    while (count is None and total < spec.target_bytes) or (count is not None and index < count):
        story = write_story(story_rng(spec, index))
        stories.append(story)
        total += len(story.encode("utf-8")) + len(SEPARATOR) + 2
        index += 1
    return stories


# ---------------------------------------------------------------------------
# Renamed copies: a copying curriculum for longer pretraining
# ---------------------------------------------------------------------------
#
# The story names come from pools of a few hundred, so a small model can lower its loss on a
# name by learning which names are common, and never learn to look back at the one the story
# already used. A renamed copy of a story gives every character, pet and town an invented
# name (a fresh one in every copy, from tens of thousands of syllable strings): its first
# mention is unpredictable, and its later mentions can only be predicted by copying them from
# the context. Mixed into the training stream, these copies are what teaches the model to
# read its context (measured in solutions/train.py's ``copying_probe``; see chapter 06).

ONSETS = words("b d f g h k l m n p r s t v w z br dr gr kr st tr sh ch th j y pl")
VOWELS = words("a e i o u a e i o ai ee oo")
CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "x"]
RENAMED_PEOPLE = frozenset(GIRL_NAMES + BOY_NAMES + NEUTRAL_NAMES + ACCENTED_GIRL_NAMES + ACCENTED_BOY_NAMES
                           + PET_NAMES + SURNAMES)
TOWN_RE = re.compile(r"\b(?:%s)(?:%s)\b" % ("|".join(TOWN_PARTS_FIRST), "|".join(TOWN_PARTS_LAST)))
CAPITALISED_RE = re.compile(r"\b[^\W\d_a-z]\w*")


def invented_name(rng: random.Random) -> str:
    """A pronounceable made-up name of two or three syllables, such as "Zeeto" or "Wuchogrel"."""
    syllables = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 2, 3))))
    return (syllables + rng.choice(CODAS)).capitalize()


def rename_characters(story: str, rng: random.Random) -> str:
    """The story with every given name, surname, pet name and town replaced by an invented
    name, consistently (each old name maps to one new name, all through the story)."""
    mapping: dict[str, str] = {}

    def new_name(match: re.Match) -> str:
        old = match.group(0)
        if old not in mapping:
            mapping[old] = invented_name(rng)
        return mapping[old]

    story = TOWN_RE.sub(new_name, story)
    return CAPITALISED_RE.sub(lambda m: new_name(m) if m.group(0) in RENAMED_PEOPLE else m.group(0), story)


def renamed_copies(stories: list[str], copies: int) -> list[str]:
    """``copies`` renamed versions of every story, copy after copy; each story of each copy has
    its own ``random.Random`` seed, so the result is the same on every machine."""
    return [rename_characters(story, random.Random(f"renamed-v{GENERATOR_VERSION}:{copy}:{index}"))
            for copy in range(copies) for index, story in enumerate(stories)]


def join_stories(stories: list[str]) -> str:
    """File layout: stories separated by a line holding only the separator; final newline."""
    return f"\n{SEPARATOR}\n".join(stories) + "\n"


def split_stories(text: str) -> list[str]:
    """Inverse of ``join_stories``."""
    return text.rstrip("\n").split(f"\n{SEPARATOR}\n")


def generate_text(split: str) -> str:
    """The full text of a split exactly as it is written to disk."""
    return join_stories(generate_stories(split))


WORD_RE = re.compile(r"[^\W\d_]+")


def word_types(text: str) -> set[str]:
    """Distinct lower-cased words: runs of letters (accented letters included).

    "don't" counts as "don" and "t", "forty-two" as "forty" and "two";
    the separator token is ignored.
    """
    return {m.group(0).lower() for m in WORD_RE.finditer(text.replace(SEPARATOR, " "))}


def write_corpus(out_dir: Path = CORPUS_DIR) -> dict[str, Path]:
    """Generate every split into ``out_dir`` and return {split: path}.

    Files are written as UTF-8 with "\\n" newlines (never the platform default).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        path = out_dir / f"{split}.txt"
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_bytes(generate_text(split).encode("utf-8"))
        tmp.replace(path)
        paths[split] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    """Write the corpus and print sizes and timing (``python -m data.corpus``)."""
    out_dir = Path(argv[0]) if argv else CORPUS_DIR
    start = time.perf_counter()
    paths = write_corpus(out_dir)
    elapsed = time.perf_counter() - start
    for split, path in paths.items():
        text = path.read_text(encoding="utf-8")
        print(f"{path}: {path.stat().st_size:,} bytes, {len(split_stories(text)):,} stories")
    print(f"generated in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
