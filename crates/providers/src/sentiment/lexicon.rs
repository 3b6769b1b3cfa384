//! The word lists of the local sentiment analyser: valences on a −4…4 scale (in the manner of
//! VADER), multi-word phrases, negators, intensifiers, diminishers and contrast words.
//! General English opinion words plus the vocabulary of customer-service calls.

/// `entry valence` pairs, one per line; an entry may be a phrase of up to four words.
pub(crate) const VALENCES: &str = "
# --- general positive
good 1.9
great 3.1
excellent 3.2
amazing 3.0
awesome 3.0
brilliant 3.0
fantastic 3.2
wonderful 3.1
superb 3.1
outstanding 3.2
terrific 3.0
fabulous 3.0
marvellous 3.0
marvelous 3.0
lovely 2.6
nice 1.8
fine 0.8
decent 1.3
solid 1.2
perfect 3.0
perfectly 2.6
ideal 2.4
best 3.0
better 1.8
improved 1.9
improvement 1.8
improving 1.5
love 3.0
loved 3.0
loving 2.8
like 0.0
liked 1.5
enjoy 2.2
enjoyed 2.2
happy 2.7
happier 2.5
glad 2.2
pleased 2.3
delighted 3.1
thrilled 3.0
excited 2.2
satisfied 2.2
content 1.4
relieved 2.0
relief 1.8
grateful 2.6
thankful 2.5
appreciate 2.3
appreciated 2.3
appreciative 2.3
impressed 2.5
impressive 2.5
recommend 1.9
recommended 1.8
pleasant 2.2
pleasure 2.4
comfortable 1.5
confident 1.6
reassured 2.0
reassuring 2.0
calm 1.0
positive 1.8
success 2.3
successful 2.3
successfully 2.2
win 2.0
bonus 1.6
benefit 1.5
beneficial 1.8
valuable 1.9
worth 1.2
worthwhile 1.9
bargain 1.8
affordable 1.5
cheap 0.5
free 1.0
generous 2.3
kind 2.0
kindly 1.5
kindness 2.4
kind of you 2.4
kind of her 2.4
kind of him 2.4
caring 2.2
lifesaver 3.0
star 2.0
hero 2.6
legend 2.4
gem 2.4
wow 2.2
yay 2.4
phew 1.0
cool 1.3
sweet 1.6
smart 1.6
clever 1.7
easy 1.8
easier 1.8
easily 1.6
simple 1.3
simpler 1.4
straightforward 1.6
smooth 1.8
smoothly 1.8
seamless 2.2
effortless 2.0
convenient 1.8
quick 1.6
quickly 1.6
quicker 1.6
fast 1.5
faster 1.5
speedy 1.8
prompt 1.4
promptly 1.6
swift 1.6
instantly 1.0
efficient 2.0
efficiently 2.0
effective 1.8
reliable 2.0
reliably 1.8
stable 1.5
secure 1.3
safe 1.2
accurate 1.5
correct 1.2
correctly 1.2
clear 1.3
clearly 0.3
helpful 2.3
helped 1.6
useful 1.9
supportive 2.0
friendly 2.2
polite 1.9
courteous 2.1
respectful 1.9
professional 1.9
knowledgeable 2.1
competent 1.8
expert 1.5
skilled 1.8
patient 2.0
patience 1.8
understanding 1.6
sympathetic 1.8
attentive 2.0
thorough 1.8
honest 1.8
genuine 1.6
charming 2.3
cheerful 2.2
welcoming 2.0
resolved 2.2
resolve 1.2
solved 2.2
solve 1.2
fixed 2.0
sorted 2.0
works 1.5
worked 1.5
working 1.5
restored 2.0
back on 1.0
up and running 2.0
on time 1.5
as promised 1.4
no problem 1.5
not a problem 1.5
no worries 1.3
no complaints 2.0
no issues 1.8
well done 2.6
good job 2.6
great job 3.0
above and beyond 3.2
out of her way 2.6
out of his way 2.6
out of their way 2.6
out of your way 2.6
made my day 3.2
saved me 2.2
mind at ease 2.6
peace of mind 2.2
value for money 2.0
great value 2.6
thank you 1.7
thanks 1.6
thankyou 1.7
cheers 1.3
ta 0.8
thank 1.5
bless 1.6
congratulations 2.5
welcome 1.2
gladly 1.8
happily 1.9
fortunately 1.5
luckily 1.6
finally 0.6
stellar 3.0
flawless 3.0
spot on 2.4
top notch 2.8
first class 2.6
five stars 2.8
well 1.3
as well 0.0
outstanding amount 0.0
outstanding balance 0.0
outstanding bill 0.0
outstanding payment 0.0
outstanding debt -0.5
ok 0.3
okay 0.3
alright 0.4
sure 0.0
yes 0.2
refund 0.0
credit 0.0
discount 0.6
compensation 0.3
waived 1.6
called me back 1.2
called back 1.0
got back to me 1.2
calmer 1.0

# --- general negative
bad -2.5
awful -3.1
terrible -3.2
horrible -3.2
horrendous -3.2
dreadful -3.0
atrocious -3.3
abysmal -3.2
appalling -3.2
shocking -2.6
disgraceful -3.1
disgrace -3.0
disgusting -3.0
pathetic -2.8
poor -2.1
poorly -2.1
lousy -2.6
rubbish -2.6
crap -2.8
crappy -2.8
shoddy -2.6
worse -2.4
worst -3.3
worsened -2.2
downhill -2.0
hate -3.0
hated -3.0
dislike -1.9
angry -2.7
angrier -2.7
anger -2.6
furious -3.2
livid -3.2
outraged -3.1
outrageous -3.0
mad -2.2
cross -1.5
upset -2.3
unhappy -2.4
sad -2.1
miserable -2.8
annoyed -2.1
annoying -2.2
annoyance -2.0
irritated -2.1
irritating -2.2
frustrated -2.5
frustrating -2.5
frustration -2.4
disappointed -2.4
disappointing -2.4
disappointment -2.4
dissatisfied -2.5
unsatisfied -2.2
displeased -2.3
fed up -2.7
sick of -2.5
tired of -2.2
had enough -2.6
enough is enough -2.8
worried -1.8
worry -1.5
worrying -1.9
concerned -1.3
concern -1.0
anxious -1.9
stressed -2.2
stress -2.0
stressful -2.3
scared -2.0
afraid -1.6
confused -1.4
confusing -1.8
confusion -1.6
unclear -1.3
complicated -1.5
difficult -1.6
hard -0.8
impossible -2.0
struggle -1.8
struggling -1.8
hassle -1.9
pain -1.8
nightmare -3.0
disaster -3.0
mess -2.1
messed -2.1
chaos -2.3
joke -1.6
ridiculous -2.5
absurd -2.3
unacceptable -2.9
unbelievable -1.5
insulting -2.8
insult -2.6
offensive -2.7
rude -2.6
rudely -2.6
impolite -2.2
arrogant -2.4
dismissive -2.3
condescending -2.4
unprofessional -2.5
incompetent -2.9
incompetence -2.9
clueless -2.5
useless -2.8
unhelpful -2.4
pointless -2.3
worthless -2.8
hopeless -2.6
careless -2.2
lazy -2.2
slow -1.6
slowly -1.4
slower -1.6
sluggish -1.8
late -1.4
later 0.0
delayed -1.7
delay -1.5
delays -1.6
overdue -1.6
wait -0.3
waiting -0.7
waited -0.9
ages -1.4
forever -1.2
broken -2.2
broke -1.8
faulty -2.2
fault -1.6
defective -2.3
damaged -2.3
damage -2.0
error -1.6
errors -1.7
mistake -1.8
mistakes -1.9
wrong -2.1
wrongly -2.1
incorrect -1.9
inaccurate -1.8
problem -1.1
problems -1.3
issue -0.8
issues -1.0
trouble -1.7
glitch -1.6
bug -1.4
fail -2.0
fails -2.0
failed -2.2
failing -2.1
failure -2.3
crash -2.0
crashes -2.1
crashed -2.1
crashing -2.1
freezes -1.9
frozen -1.6
outage -2.2
outages -2.3
unstable -2.0
unreliable -2.3
dropping -1.6
drops -1.5
dropped -1.5
disconnected -1.8
disconnecting -1.8
cut off -1.9
cutting out -1.9
cuts out -1.9
went dead -2.0
hung up -2.2
hang up -1.2
lost -1.8
missing -1.6
stolen -2.6
fraud -2.8
fraudulent -2.8
scam -3.0
rip off -3.0
ripped off -3.0
rip-off -3.0
overcharged -2.6
overcharging -2.6
overpriced -2.3
expensive -1.5
pricey -1.3
costly -1.4
fees -0.6
penalty -1.6
charged twice -2.6
double charged -2.6
price went up -1.6
prices went up -1.6
went up again -1.8
hidden -0.8
misled -2.5
misleading -2.4
mislead -2.3
lie -2.4
lied -2.6
lies -2.4
lying -2.5
cheated -2.8
ignored -2.3
ignore -1.8
ignoring -2.2
excuses -1.8
excuse -1.2
blame -1.8
blamed -1.8
complaint -1.7
complaints -1.8
complain -1.7
complaining -1.7
complained -1.8
unfortunately -1.2
sadly -1.5
regret -1.8
sorry -0.4
apologise -0.3
apologize -0.3
harassed -2.6
threatened -2.4
threatening -2.4
waste -2.3
wasted -2.4
wasting -2.4
waste of time -3.0
waste of money -3.0
on hold -1.6
kept on hold -2.2
still waiting -2.3
been waiting -1.8
kept waiting -2.3
keep waiting -2.0
too long -1.9
took forever -2.5
taking forever -2.5
no idea -1.6
not a clue -2.0
driving me mad -2.8
driving me crazy -2.8
last straw -2.8
third time -1.7
fourth time -1.9
fifth time -2.0
five times -1.5
again and again -1.6
over and over -1.6
nothing but 0.0
could be better -1.6
could have been better -1.6
thanks for nothing -2.8
without warning -1.6
without any warning -1.6
without notice -1.6
without any notice -1.6
speak to a manager -1.4
speak to your manager -1.4
close my account -1.2
cancel -0.5
cancelled -1.0
cancelling -0.6
switch provider -1.0
leave -0.3
leaving -0.6
downgrade -0.6
escalate -1.2
ombudsman -1.8
lawyer -1.6
solicitor -1.6
unresolved -2.2
unfixed -2.0
doubled -1.4
shame -1.9
pity -1.3
ugly -2.1
noisy -1.4
crackling -1.5
patchy -1.6
weak -1.4
awkward -1.4
inconvenient -1.8
inconvenience -1.6
chasing -1.7
chase -1.3
nagging -1.6
repeat -0.6
transferred -0.6
transferring -0.8
passed around -2.0
passed from pillar to post -2.2
expected better -2.0
expected more -1.6
to be honest 0.0
to be fair 0.0
repeating -0.8
again -0.2
";

/// Expected service actions: neutral when they happen ("the card arrived"), a complaint when
/// negated ("it never arrived", "nobody called back", "you didn't help"). The value is used
/// only under negation, as is.
pub(crate) const NEGATED_ONLY: &[(&str, f32)] = &[
    ("help", -1.8),
    ("helped", -1.8),
    ("arrived", -1.8),
    ("arrive", -1.6),
    ("received", -1.4),
    ("delivered", -1.6),
    ("showed up", -2.0),
    ("turned up", -2.0),
    ("work", -1.8),
    ("care", -2.0),
    ("cares", -2.0),
    ("listen", -1.8),
    ("listens", -1.8),
    ("listened", -1.8),
    ("clue", -2.0),
    ("answer", -1.4),
    ("answered", -1.4),
    ("reply", -1.4),
    ("replied", -1.6),
    ("respond", -1.4),
    ("responded", -1.6),
    ("changed", -1.2),
    ("call back", -1.6),
    ("call me back", -1.8),
    ("bothered", -1.8),
    ("explain", -1.2),
    ("explained", -1.2),
];

/// Words that flip the valence of what follows in their clause.
pub(crate) const NEGATORS: &[&str] = &[
    "not", "no", "never", "nobody", "none", "nothing", "nowhere", "neither", "nor", "without", "cannot", "hardly",
    "barely", "scarcely", "lack", "lacking", "lacks", "noone",
];

/// Multi-word negators, matched before single words.
pub(crate) const NEGATOR_PHRASES: &[&str] = &["no one", "no longer", "not any", "not once", "far from"];

/// Words that strengthen what follows, and by how much.
pub(crate) const BOOSTERS: &[(&str, f32)] = &[
    ("very", 1.3),
    ("really", 1.3),
    ("so", 1.3),
    ("extremely", 1.5),
    ("incredibly", 1.5),
    ("absolutely", 1.5),
    ("totally", 1.4),
    ("completely", 1.4),
    ("utterly", 1.5),
    ("entirely", 1.3),
    ("thoroughly", 1.3),
    ("truly", 1.3),
    ("genuinely", 1.3),
    ("seriously", 1.4),
    ("super", 1.4),
    ("highly", 1.3),
    ("hugely", 1.4),
    ("massively", 1.4),
    ("deeply", 1.3),
    ("especially", 1.2),
    ("exceptionally", 1.5),
    ("remarkably", 1.4),
    ("terribly", 1.3),
    ("awfully", 1.3),
    ("insanely", 1.4),
    ("ridiculously", 1.4),
    ("most", 1.2),
    ("such", 1.2),
    ("too", 1.2),
    ("quite", 1.1),
    ("still", 1.15),
    ("constant", 1.3),
    ("constantly", 1.3),
    ("always", 1.1),
    ("even", 1.1),
    ("much", 1.2),
    ("lot", 1.1),
    ("definitely", 1.2),
    ("certainly", 1.1),
    ("honestly", 1.05),
    ("properly", 1.1),
    ("keep", 1.2),
    ("keeps", 1.2),
];

/// Multi-word boosters.
pub(crate) const BOOSTER_PHRASES: &[(&str, f32)] =
    &[("so much", 1.4), ("a lot", 1.2), ("at all", 1.3), ("by far", 1.4)];

/// Words and phrases that weaken what follows.
pub(crate) const DIMINISHERS: &[(&str, f32)] = &[
    ("slightly", 0.6),
    ("somewhat", 0.6),
    ("fairly", 0.8),
    ("rather", 0.8),
    ("pretty", 0.9),
    ("mildly", 0.5),
    ("marginally", 0.5),
    ("partly", 0.6),
    ("partially", 0.6),
    ("relatively", 0.8),
    ("almost", 0.7),
    ("nearly", 0.7),
    ("occasionally", 0.7),
    ("sometimes", 0.8),
    ("bit", 0.7),
    ("little", 0.7),
    ("kind of", 0.6),
    ("sort of", 0.6),
    ("kinda", 0.6),
    ("a bit", 0.6),
    ("a little", 0.6),
];

/// After one of these, what follows outweighs what came before ("nice, but not fixed").
pub(crate) const CONTRASTS: &[&str] = &["but", "however", "yet", "except", "whereas"];

/// These open a subordinate clause that counts for less ("even though I was confused at first").
pub(crate) const CONCESSIONS: &[&str] = &["although", "though", "despite", "while", "whilst", "even though"];
